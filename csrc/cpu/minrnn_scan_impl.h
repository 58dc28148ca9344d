// The fused minGRU layer scan, included once per instruction set by minrnn_scan.cpp inside
// `#pragma GCC target(...)` and a namespace of its own, so that the plain loops below are
// auto-vectorised for that ISA (no intrinsics: the same source is the portable fallback).
// Needs <cmath>, <cstdint>, <cstring> and fusedrnn/cells.h included before the namespace opens.
//
// One call runs one task: a batch row `bi` and channels [d0, d0 + nd), over every step.
// p holds the projected gates, [k_z | k_h] for each (row, step): 2*H values per row, k_z at
// channel j, k_h at H + j. Per element, with s = sigmoid(k_z), a = sigmoid(-k_z), g = g(k_h):
//     forward   h_t = a h_{t-1} + s g
//     backward  c = dh_t + c;  dk_z = c (g - h_{t-1}) s a;  dk_h = c s g'(k_h);  c = a c
// (the scan's backward g_t = dh_t + a_{t+1} g_{t+1} with the gate derivatives of
// nn/minrnn.py's _Coefficients folded in). Steps at or past a row's length are the identity
// (a = 1, b = 0), as the layer's masking does; their gate gradients are 0.
// A reset flag at (row, step) (`rs`, bool in the (row, step) layout of Geo::row, or null) makes
// a_t = 0 there: the state carried into the step (h0 included) is replaced by zeros, so
// h_t = s g, and no gradient flows back across it (c = 0 after the step). The flags are those of
// this direction: the layer shifts them for the reverse one. Padding wins over a reset.

struct Geo {
  int64_t T, B, H;
  bool reverse, time_major;
  int64_t len_of(const int64_t* lengths, int64_t bi) const { return lengths ? lengths[bi] : T; }
  bool reset_at(const bool* rs, int64_t bi, int64_t t) const { return rs && rs[row(bi, t, 1)]; }
  // offset of (row, step) in a [.., .., width] tensor of this layout
  int64_t row(int64_t bi, int64_t t, int64_t width) const {
    return (time_major ? t * B + bi : bi * T + t) * width;
  }
};

// exp: cells.h's (the host float one is a vectorisable polynomial, 8e-8 relative, libm's 0 and
// +inf past its range; float64 is libm's)
template <typename T>
inline T vexp(T x) {
  return fusedrnn::fr_exp(x);
}


// s = sigmoid(k), a = sigmoid(-k) = 1 - s without cancellation
template <typename T>
inline void sig_pair(T k, T& s, T& a) {
  const T e = vexp(-std::fabs(k));
  const T r = T(1) / (T(1) + e);
  s = k >= T(0) ? r : e * r;
  a = k >= T(0) ? e * r : r;
}
// g(k) = k + 1/2 for k >= 0, sigmoid(k) below; dg = g'(k) = 1, resp. sigmoid(k) sigmoid(-k)
template <typename T>
inline void g_pair(T k, T& g, T& dg) {
  const T e = vexp(k < T(0) ? k : T(0));
  const T r = T(1) / (T(1) + e);
  g = k >= T(0) ? k + T(0.5) : e * r;
  dg = k >= T(0) ? T(1) : e * r * r;
}

// The mixing weights a (of h_{t-1}) and s = 1 - a (of g(k_h)) from the gate inputs k (already
// biased), and their derivatives: dL/dk_gate = dL/ds * d_gate with dL/ds = c (g - h_{t-1}).
//   minGRU (G = 2): s = sigmoid(k_z), a = sigmoid(-k_z), d_z = s a.
//   minLSTM (G = 3): a = f / (f + i), s = i / (f + i) with f = sigmoid(k_f), i = sigmoid(k_i);
//   times (1 + e^-k_f)(1 + e^-k_i) on both sides, a = (1 + e^-k_i) / (2 + e^-k_i + e^-k_f), and
//   every exponent shifted by m = max(0, -k_f, -k_i) so none overflows and the denominator is
//   at least 1 (no 0/0 where both gates underflow): with A = e^-m, F = e^(-k_f-m),
//   I = e^(-k_i-m), D = 2A + I + F: a = (A + I)/D, s = (A + F)/D, d_f = -(A + I) F / D^2,
//   d_i = (A + F) I / D^2 (= -a s (1 - f) and a s (1 - i): positive terms only, no cancellation).
template <int G, typename T>
inline void mix(T kf, T ki, T& s, T& a, T& d1, T& d2) {
  if constexpr (G == 2) {
    sig_pair(kf, s, a);
    d1 = s * a;
    d2 = T(0);
  } else {
    T m = -kf > -ki ? -kf : -ki;
    m = m > T(0) ? m : T(0);
    const T A = vexp(-m), F = vexp(-kf - m), I = vexp(-ki - m);
    const T inv = T(1) / (A + A + I + F);
    a = (A + I) * inv;
    s = (A + F) * inv;
    d1 = -a * F * inv;
    d2 = s * I * inv;
  }
}

// One task: rows [b0, b1) and channels [d0, d0 + nd), every step; the state of row bi is
// s[(bi - b0) * nd ...]. The step loop is outermost so that in the time-major layout a task reads
// one contiguous run of memory per step (rows b0..b1 of step t are adjacent): walking one row
// alone would jump B * 2H values per step, a new page each time, and run at memory latency.
template <int G, typename T>
void gru_fwd_task(const Geo& g, const T* p, const T* bias, const T* h0, const int64_t* lengths,
                  const bool* rs, T* h, T* hn, int64_t b0, int64_t b1, int64_t d0, int64_t nd,
                  T* state) {
  const T* bz = bias + d0;  // bias [G H] ([b_z | b_h] or [b_f | b_i | b_h]) added here, not by
  const T* bh = bz + (G - 1) * g.H;  // the GEMM: addmm would first copy it into every row
  for (int64_t bi = b0; bi < b1; ++bi)
    for (int64_t j = 0; j < nd; ++j)
      state[(bi - b0) * nd + j] = h0 ? h0[bi * g.H + d0 + j] : T(0);
  for (int64_t k = 0; k < g.T; ++k) {
    const int64_t t = g.reverse ? g.T - 1 - k : k;
    for (int64_t bi = b0; bi < b1; ++bi) {
      T* __restrict s = state + (bi - b0) * nd;  // restrict: no run-time overlap checks
      T* __restrict hp = h + g.row(bi, t, g.H) + d0;
      if (t >= g.len_of(lengths, bi)) {  // padding: the state passes through
        for (int64_t j = 0; j < nd; ++j) hp[j] = s[j];
        continue;
      }
      if (g.reset_at(rs, bi, t))  // a_t = 0: the carried state is dropped
        for (int64_t j = 0; j < nd; ++j) s[j] = T(0);
      const T* kz = p + g.row(bi, t, G * g.H) + d0;
      const T* kh = kz + (G - 1) * g.H;
      const T* ki = G == 3 ? kz + g.H : kz;  // minLSTM's input gate (unused by minGRU)
      const T* bi_ = G == 3 ? bz + g.H : bz;
#pragma omp simd
      for (int64_t j = 0; j < nd; ++j) {
        T sz, az, d1, d2, gx, dg;
        mix<G>(kz[j] + bz[j], ki[j] + bi_[j], sz, az, d1, d2);
        g_pair(kh[j] + bh[j], gx, dg);
        const T v = az * s[j] + sz * gx;
        s[j] = v;
        hp[j] = v;
      }
    }
  }
  for (int64_t bi = b0; bi < b1; ++bi)  // the final state: the layer's h_n
    for (int64_t j = 0; j < nd; ++j) hn[bi * g.H + d0 + j] = state[(bi - b0) * nd + j];
}

template <int G, typename T>
void gru_bwd_task(const Geo& g, const T* p, const T* bias, const T* h, const T* h0,
                  const int64_t* lengths, const bool* rs, const T* gh, const int64_t* gs,
                  const T* ghn,
                  const T* zero_row, T* dp, T* dh0, T* dbias_rows, int64_t b0, int64_t b1,
                  int64_t d0, int64_t nd, T* carry, T* gbuf) {
  const T* bz = bias + d0;
  const T* bh = bz + (G - 1) * g.H;
  const T* bi_ = G == 3 ? bz + g.H : bz;
  for (int64_t bi = b0; bi < b1; ++bi)  // h_n's gradient enters before the last step
    for (int64_t j = 0; j < nd; ++j)
      carry[(bi - b0) * nd + j] = ghn ? ghn[bi * g.H + d0 + j] : T(0);
  for (int64_t k = g.T - 1; k >= 0; --k) {  // against the forward's order
    const int64_t t = g.reverse ? g.T - 1 - k : k;
    for (int64_t bi = b0; bi < b1; ++bi) {
      T* c = carry + (bi - b0) * nd;
      // grad_h with any strides gs = (time, row, channel): a broadcast y.sum() gradient is read
      // in place, not materialised as a [T, B, H] tensor first
      const T* gr = gh + t * gs[0] + bi * gs[1] + d0 * gs[2];
      if (gs[2] != 1) {
        for (int64_t j = 0; j < nd; ++j) gbuf[j] = gr[j * gs[2]];
        gr = gbuf;
      }
      T* dbz = dbias_rows + bi * G * g.H + d0;  // per row, so the sum is the same on any threads
      T* dbh = dbz + (G - 1) * g.H;
      T* dbi = dbz + g.H;
      T* dkz = dp + g.row(bi, t, G * g.H) + d0;
      T* dkh = dkz + (G - 1) * g.H;
      T* dki = dkz + g.H;  // minLSTM's input gate; minGRU's dkh (rewritten after it)
      if (t >= g.len_of(lengths, bi)) {  // identity step: the gradient passes through
        for (int64_t j = 0; j < nd; ++j) {
          c[j] += gr[j];
          dkz[j] = T(0);
          dki[j] = T(0);
          dkh[j] = T(0);
        }
        continue;
      }
      // the state before this step: the previous step's output, or h0 (zero) at the first step
      const int64_t tp = g.reverse ? t + 1 : t - 1;
      const bool cut = g.reset_at(rs, bi, t);  // a_t = 0: h_prev was zeros, nothing flows back
      const T keep = cut ? T(0) : T(1);
      const T* hprev = cut ? zero_row + d0
                           : (k != 0 ? h + g.row(bi, tp, g.H) + d0
                                     : (h0 ? h0 + bi * g.H : zero_row) + d0);
      const T* kz = p + g.row(bi, t, G * g.H) + d0;
      const T* kh = kz + (G - 1) * g.H;
      const T* ki = G == 3 ? kz + g.H : kz;
#pragma omp simd
      for (int64_t j = 0; j < nd; ++j) {
        T sz, az, d1, d2, gx, dg;
        mix<G>(kz[j] + bz[j], ki[j] + bi_[j], sz, az, d1, d2);
        g_pair(kh[j] + bh[j], gx, dg);
        const T gv = gr[j] + c[j];
        const T ds = gv * (gx - hprev[j]);  // dL/ds, s the weight of g(k_h)
        dkz[j] = ds * d1;
        dbz[j] += ds * d1;
        if (G == 3) {
          dki[j] = ds * d2;
          dbi[j] += ds * d2;
        }
        dkh[j] = gv * sz * dg;
        dbh[j] += gv * sz * dg;
        c[j] = keep * az * gv;
      }
    }
  }
  for (int64_t bi = b0; bi < b1; ++bi)
      for (int64_t j = 0; j < nd; ++j) dh0[bi * g.H + d0 + j] = carry[(bi - b0) * nd + j];
}
