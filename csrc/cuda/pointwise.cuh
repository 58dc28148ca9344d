// Per-element bodies of the CUDA kernels: index math, masking, dtype conversion, and ONE call
// into cells.h. No cell equation is written here (tests/test_cuda_backend.py checks that).
//
// Everything is HOST_DEVICE and free of CUDA-only syntax, so that the same functions run inside
// the __global__ wrappers (kernels.cuh) and in the host emulation that the CPU tests build
// (tests/cuda_emu/), which is how the index math is tested without a GPU.
#pragma once

#include "launchers.h"

namespace fusedrnn {
namespace cuda {

HOST_DEVICE inline float to_acc(float v) { return v; }
HOST_DEVICE inline double to_acc(double v) { return v; }
HOST_DEVICE inline float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
HOST_DEVICE inline float to_acc(__half v) { return __half2float(v); }

template <typename S>
HOST_DEVICE inline S from_acc(acc_t<S> v);
template <>
HOST_DEVICE inline float from_acc<float>(float v) { return v; }
template <>
HOST_DEVICE inline double from_acc<double>(double v) { return v; }
template <>
HOST_DEVICE inline __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
HOST_DEVICE inline __half from_acc<__half>(float v) { return __float2half_rn(v); }

// The reference's masking rule: row b takes part in step t iff t < lengths[b] (a negative length
// never does, one beyond T always does).
HOST_DEVICE inline bool is_live(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths == nullptr || t < lengths[b];
}

// Number of steps row b runs: min(max(lengths[b], 0), T).
HOST_DEVICE inline int64_t run_length(const int64_t* lengths, int64_t T, int64_t b) {
  if (lengths == nullptr) return T;
  const int64_t l = lengths[b];
  return l < 0 ? 0 : (l > T ? T : l);
}

template <typename A>
HOST_DEVICE inline A clamp_abs(A v, A clip) {
  return v > clip ? clip : (v < -clip ? -clip : v);
}

// The step row b processes before t, or -1 where its state comes from h0/c0.
HOST_DEVICE inline int64_t prev_step(const int64_t* lengths, int64_t T, bool reverse, int64_t t,
                                     int64_t b) {
  if (reverse) return t + 1 < run_length(lengths, T, b) ? t + 1 : -1;
  return t - 1;
}

// Whether the state row b carries into step t (tp: the step processed before it, -1 = h0/c0)
// restarts from zeros: a segment starts at t (forward) or at tp (reverse: the state passes from
// tp = t + 1 down to t; a reversed sequence's first step starts from h0, never reset).
template <typename A>
HOST_DEVICE inline bool carry_reset(const StateCarry<A>& k, int64_t B, int64_t b, int64_t t,
                                    int64_t tp) {
  const int64_t at = k.reverse ? tp : t;
  return k.reset != nullptr && at >= 0 && k.reset[at * B + b] != A(0);
}

// Whether the state row b carries out of its live step t is zeroed before its next step: the
// forward writes zeros as the state, the backward ignores the gradient carried across.
template <typename A>
HOST_DEVICE inline bool reset_after(const StateCarry<A>& k, const int64_t* lengths, int64_t B,
                                    int64_t b, int64_t t) {
  if (k.reset == nullptr) return false;
  const int64_t tn = k.reverse ? t - 1 : t + 1;  // the next step in processing order
  return tn >= 0 && tn < run_length(lengths, k.T, b) && carry_reset(k, B, b, tn, t);
}

// Zoneout's keep-old mask of row (t, b) (h part, then c part), or nullptr without zoneout.
template <typename A>
HOST_DEVICE inline const A* zoneout_row(const StateCarry<A>& k, int64_t B, int64_t t, int64_t b) {
  return k.zo != nullptr ? k.zo + (t * B + b) * k.Z : nullptr;
}

// The rest of a forward step at unit j of row b once the cell's new h and c are known:
// zoneout, resets, the state, y and what backward reads (cs, cr, hr, hs).
template <Cell C, typename S>
HOST_DEVICE inline void fwd_commit(const FwdStep<S>& a, int64_t b, int64_t j, acc_t<S> h_new,
                                   acc_t<S> c_new) {
  using A = acc_t<S>;
  constexpr bool kHasC = CellOps<C>::kHasC;
  const int64_t H = a.H;
  const int64_t row = a.t * a.B + b;
  const bool live = is_live(a.lengths, a.t, b);
  const bool proj = a.proj;
  const A h_prev = proj ? A(0) : a.h[b * H + j];
  const A c_prev = kHasC ? a.c[b * H + j] : A(0);
  // zoneout: the state keeps the old value with weight m (the projection mixes its own h)
  A h_st = h_new, c_st = c_new;
  if (const A* m = zoneout_row(a.k, a.B, a.t, b)) {
    if (!proj) h_st = m[j] * h_prev + (A(1) - m[j]) * h_new;
    if (kHasC) c_st = m[a.Ho + j] * c_prev + (A(1) - m[a.Ho + j]) * c_new;
  }
  // the next step starts a segment: the state it reads is zeros (y keeps this step's h)
  const bool cut = live && reset_after(a.k, a.lengths, a.B, b, a.t);
  if (kHasC) {
    a.cs[row * H + j] = live ? c_st : c_prev;
    if (a.cr != nullptr) a.cr[row * H + j] = c_new;
    if (live) a.c[b * H + j] = cut ? A(0) : c_st;
  }
  if (a.hr != nullptr) a.hr[row * H + j] = live ? h_new : A(0);
  if (!proj) {
    const A out_h = live ? h_st : A(0);
    if (live) a.h[b * H + j] = cut ? A(0) : h_st;
    a.y[row * H + j] = from_acc<S>(out_h);
    if (a.hs != nullptr) a.hs[row * H + j] = out_h;
  }
}

// Forward, unit j of row b at step a.t.
template <Cell C, typename S>
HOST_DEVICE inline void fwd_element(const FwdStep<S>& a, int64_t b, int64_t j) {
  using A = acc_t<S>;
  using Ops = CellOps<C>;
  constexpr int G = Ops::G, NS = Ops::S;
  constexpr bool kHasC = Ops::kHasC;
  const int64_t H = a.H, GH = G * a.H;
  const int64_t row = a.t * a.B + b;  // row of the [T, B, ...] tensors

  A x[G], g[G], out[NS > 0 ? NS : 1];
  for (int k = 0; k < G; ++k) {
    x[k] = to_acc(a.xw[row * GH + k * H + j]);
    g[k] = a.hh[b * GH + k * H + j];
  }
  // the carried state (already zero where a segment starts at this step)
  const A h_prev = a.proj ? A(0) : a.h[b * H + j];
  const A c_prev = kHasC ? a.c[b * H + j] : A(0);
  A h_new, c_new = c_prev;
  Ops::fwd(x, g, h_prev, c_prev, &h_new, &c_new, out);
  // saved is written on dead rows too: finite values, never read, no uninitialized memory
  for (int k = 0; k < NS; ++k) a.saved[row * NS * H + k * H + j] = out[k];
  if (Ops::kNormState) {
    a.c_new[b * H + j] = c_new;  // h needs the row's LN(c): norm_state_fwd_row commits
    return;
  }
  fwd_commit<C, S>(a, b, j, h_new, c_new);
}

// Projection commit, element k of row b.
template <typename S>
HOST_DEVICE inline void proj_fwd_element(const ProjFwdStep<S>& a, int64_t b, int64_t k) {
  using A = acc_t<S>;
  const bool live = is_live(a.lengths, a.t, b);
  const int64_t i = (a.t * a.B + b) * a.P + k;
  A v = live ? a.hp[b * a.P + k] : A(0);
  const A* m = zoneout_row(a.k, a.B, a.t, b);
  if (live && m != nullptr) v = m[k] * a.h[b * a.P + k] + (A(1) - m[k]) * v;
  if (live) a.h[b * a.P + k] = reset_after(a.k, a.lengths, a.B, b, a.t) ? A(0) : v;
  a.y[i] = from_acc<S>(v);
  if (a.hs != nullptr) a.hs[i] = v;
}

// The cell's share of dL/dh at unit j of a live row b at step a.t: the carried gradient (none
// where the state leaving t was reset: drop) plus dy, or the projection's dr; with zoneout the
// mask's kept share goes to h_prev directly (*dh_keep; with a projection the h part was split
// by proj_bwd_element).
template <typename A>
HOST_DEVICE inline A bwd_dh_in(const BwdStep<A>& a, int64_t b, int64_t j, bool drop, A* dh_keep) {
  const int64_t row = a.t * a.B + b;
  const bool proj = a.dr != nullptr;
  const A dh_carry = proj || drop ? A(0) : a.dh[b * a.Ho + j];
  A dh_in = proj ? a.dr[b * a.H + j]
                 : dh_carry + (a.dy != nullptr ? a.dy[row * a.Ho + j] : A(0));
  *dh_keep = A(0);
  if (const A* m = zoneout_row(a.k, a.B, a.t, b)) {
    if (!proj) {
      *dh_keep = m[j] * dh_in;
      dh_in = (A(1) - m[j]) * dh_in;
    }
  }
  return dh_in;
}

// Backward, unit j of row b at step a.t.
template <Cell C, typename A>
HOST_DEVICE inline void bwd_element(const BwdStep<A>& a, int64_t b, int64_t j) {
  using Ops = CellOps<C>;
  constexpr int G = Ops::G, NS = Ops::S;
  constexpr bool kHasC = Ops::kHasC;
  const int64_t H = a.H, GH = G * a.H, Ho = a.Ho, t = a.t;
  const int64_t row = t * a.B + b;
  const bool proj = a.dr != nullptr;
  A* dx_out = a.dxw + row * GH;
  A* dg_out = a.dgh + row * GH;
  if (!is_live(a.lengths, t, b)) {
    // past the end: no gradient into this step; dh and dc pass through unchanged
    for (int k = 0; k < G; ++k) dx_out[k * H + j] = A(0);
    if (Ops::kSplitRec)
      for (int k = 0; k < G; ++k) dg_out[k * H + j] = A(0);
    return;
  }
  // the previous step in processing order (-1: the state came from h0/c0); cut: the state
  // entering t restarted from zeros; drop: the state leaving t did, so no gradient came back
  const int64_t tp = prev_step(a.lengths, a.k.T, a.k.reverse, t, b);
  const bool cut = carry_reset(a.k, a.B, b, t, tp);
  const bool drop = reset_after(a.k, a.lengths, a.B, b, t);
  A h_prev = A(0);
  if (!proj && !cut) h_prev = tp >= 0 ? a.y[(tp * a.B + b) * Ho + j] : a.h0[b * Ho + j];
  A c_prev = A(0), c = A(0), dc = A(0);
  if (kHasC) {
    if (cut) c_prev = A(0);
    else if (tp >= 0) c_prev = a.cs[(tp * a.B + b) * H + j];
    else if (a.c0 != nullptr) c_prev = a.c0[b * H + j];
    c = a.cr != nullptr ? a.cr[row * H + j] : a.cs[row * H + j];
    dc = drop ? A(0) : a.dc[b * H + j];
  }
  A dh_keep;
  A dh_in = bwd_dh_in(a, b, j, drop, &dh_keep);
  const A h = proj ? A(0) : (a.hr != nullptr ? a.hr[row * H + j] : a.y[row * Ho + j]);
  // zoneout: the mask's kept share of dL/dc goes to c_prev directly, the rest into the cell
  A dc_keep = A(0);
  if (const A* m = zoneout_row(a.k, a.B, t, b)) {
    if (kHasC) {
      dc_keep = m[Ho + j] * dc;
      dc = (A(1) - m[Ho + j]) * dc;
    }
  }
  // norm_state: what reaches c through the state LN joins the cell's share
  if (Ops::kNormState) dc += a.dc_ln[b * H + j];

  A saved[NS > 0 ? NS : 1], dx[G], dhh_last, dh_direct = A(0), dc_prev = A(0);
  for (int k = 0; k < NS; ++k) saved[k] = a.saved[row * NS * H + k * H + j];
  Ops::bwd(dh_in, dc, saved, h, h_prev, c_prev, c, dx, &dhh_last, &dh_direct, &dc_prev);
  dh_direct += dh_keep;
  dc_prev += dc_keep;

  for (int k = 0; k < G; ++k) dx_out[k * H + j] = dx[k];
  // recurrent-side gradient (its own buffer where the cell's differs): equal to dx except in
  // the last block (GRU's n: dx * r)
  if (Ops::kSplitRec) {
    for (int k = 0; k < G - 1; ++k) dg_out[k * H + j] = dx[k];
    dg_out[(G - 1) * H + j] = dhh_last;
  }
  if (tp < 0 && !cut) {  // h_prev was h0 (a reset one is zero: no weight gradient)
    for (int k = 0; k < G - 1; ++k) a.dg_first[b * GH + k * H + j] = dx[k];
    a.dg_first[b * GH + (G - 1) * H + j] = dhh_last;
  }
  if (kHasC) a.dc[b * H + j] = a.clip > A(0) ? clamp_abs(dc_prev, a.clip) : dc_prev;
  if (!proj) a.dh[b * Ho + j] = dh_direct;
}

template <typename A>
HOST_DEVICE inline void proj_bwd_element(const ProjBwdStep<A>& a, int64_t b, int64_t k) {
  const int64_t i = b * a.P + k, row = (a.t * a.B + b) * a.P + k;
  if (!is_live(a.lengths, a.t, b)) {
    a.dhp[row] = A(0);
    return;
  }
  const A carried = reset_after(a.k, a.lengths, a.B, b, a.t) ? A(0) : a.dh[i];
  const A d = carried + (a.dy != nullptr ? a.dy[row] : A(0));
  if (const A* m = zoneout_row(a.k, a.B, a.t, b)) {
    a.dhp[row] = (A(1) - m[k]) * d;
    a.dh[i] = m[k] * d;
  } else {
    a.dhp[row] = d;
    a.dh[i] = A(0);
  }
}

template <typename A>
HOST_DEVICE inline void clamp_element(const ClampStep<A>& a, int64_t b, int64_t k) {
  if (is_live(a.lengths, a.t, b)) a.dh[b * a.N + k] = clamp_abs(a.dh[b * a.N + k], a.clip);
}


// ---------------------------------------------------------------------------------------------
// Row bodies of the normalisation kernels (launchers.h NormRec* / NormState*): ONE batch row b,
// run by the cooperating threads of one block. `r` is the block: r.first() / r.stride() give
// this thread's columns (j = first, first + stride, ...), r.sum(v) is the sum of v over the
// block's threads (a barrier: every thread of the block calls it, in the same order). On the GPU
// it is a shuffle + shared-memory reduction (kernels.cuh), in the host emulation a group of host
// threads with a barrier. Each thread reads and writes only its own columns, so no other
// synchronisation is needed.

HOST_DEVICE inline float row_sqrt(float v) { return ::sqrtf(v); }
HOST_DEVICE inline double row_sqrt(double v) { return ::sqrt(v); }

// The mean and 1/std (biased variance + kLnEps) of v[0, n), two-pass (centred squares).
template <typename A, typename R>
HOST_DEVICE inline void row_moments(const A* v, int64_t n, R& r, A* mean, A* rstd) {
  A s = A(0);
  for (int64_t j = r.first(); j < n; j += r.stride()) s += v[j];
  const A mu = r.sum(s) / A(n);
  A q = A(0);
  for (int64_t j = r.first(); j < n; j += r.stride()) {
    const A d = v[j] - mu;
    q += d * d;
  }
  *mean = mu;
  *rstd = A(1) / row_sqrt(r.sum(q) / A(n) + A(kLnEps));
}

// LN backward of one row with x^ = ln[0, n), 1/std = rstd, dy = dxh[j] * gain[j]:
// dv = rstd * (dy - mean(dy) - x^ * mean(dy * x^)). Returns the two means.
template <typename A, typename R>
HOST_DEVICE inline void row_ln_bwd_means(const A* dxh, const A* gain, const A* ln, int64_t n, R& r,
                                         A* m1, A* m2) {
  A s1 = A(0), s2 = A(0);
  for (int64_t j = r.first(); j < n; j += r.stride()) {
    const A d = dxh[j] * gain[j];
    s1 += d;
    s2 += d * ln[j];
  }
  *m1 = r.sum(s1) / A(n);
  *m2 = r.sum(s2) / A(n);
}

// norm_recurrent, forward: hh[b] = LN(hh[b]) * gain + bias; keeps x^ and 1/std in ln[t, b].
template <typename A, typename R>
HOST_DEVICE inline void norm_rec_fwd_row(const NormRecFwdStep<A>& a, int64_t b, R& r) {
  A* v = a.hh + b * a.N;
  A mean, rstd;
  row_moments(v, a.N, r, &mean, &rstd);
  A* ln = a.ln + (a.t * a.B + b) * a.ld;
  for (int64_t j = r.first(); j < a.N; j += r.stride()) {
    const A xh = (v[j] - mean) * rstd;
    ln[j] = xh;
    v[j] = xh * a.gain[j] + (a.bias != nullptr ? a.bias[j] : A(0));
  }
  if (r.first() == 0) ln[a.N] = rstd;
}

// norm_recurrent, backward: dgh[t, b] = LN backward of dgn[t, b] (0 on a dead row, whose dgn is
// 0), also into dg_first[b] where the row's h_prev was h0 (not reset).
template <typename A, typename R>
HOST_DEVICE inline void norm_rec_bwd_row(const NormRecBwdStep<A>& a, int64_t b, R& r) {
  const int64_t row = a.t * a.B + b;
  const A* dg = a.dgn + row * a.N;
  const A* ln = a.ln + row * a.ld;
  const A rstd = ln[a.N];
  A m1, m2;
  row_ln_bwd_means(dg, a.gain, ln, a.N, r, &m1, &m2);
  const int64_t tp = prev_step(a.lengths, a.k.T, a.k.reverse, a.t, b);
  const bool first = is_live(a.lengths, a.t, b) && tp < 0 && !carry_reset(a.k, a.B, b, a.t, tp);
  A* out = a.dgh + row * a.N;
  for (int64_t j = r.first(); j < a.N; j += r.stride()) {
    const A d = rstd * (dg[j] * a.gain[j] - m1 - ln[j] * m2);
    out[j] = d;
    if (first) a.dg_first[b * a.N + j] = d;
  }
}

// norm_state, forward: n = LN(c_new[b]) * gain + bias, h = out(saved, n), then the commit.
template <Cell C, typename S, typename R>
HOST_DEVICE inline void norm_state_fwd_row(const NormStateFwdStep<S>& s, int64_t b, R& r) {
  using A = acc_t<S>;
  using Ops = CellOps<C>;
  constexpr int NS = Ops::S;
  const FwdStep<S>& a = s.a;
  const int64_t H = a.H, row = a.t * a.B + b;
  const A* c = a.c_new + b * H;
  A mean, rstd;
  row_moments(c, H, r, &mean, &rstd);
  A* ln = s.ln + row * s.ld + s.off;
  for (int64_t j = r.first(); j < H; j += r.stride()) {
    const A ch = (c[j] - mean) * rstd;
    ln[j] = ch;
    A sv[NS > 0 ? NS : 1];
    A* sp = a.saved + row * NS * H + j;
    for (int k = 0; k < NS; ++k) sv[k] = sp[k * H];
    const A h_new = Ops::out(sv, ch * s.gain[j] + s.bias[j]);
    for (int k = 0; k < NS; ++k) sp[k * H] = sv[k];
    fwd_commit<C, S>(a, b, j, h_new, c[j]);
  }
  if (r.first() == 0) ln[H] = rstd;
}

// norm_state, backward (before the pointwise kernel): dn = out_bwd(dh, saved) per unit (kept in
// dn[t, b]; 0 on a dead row), then dc_ln[b] = the LN backward of dn * gain.
template <Cell C, typename A, typename R>
HOST_DEVICE inline void norm_state_bwd_row(const NormStateBwdStep<A>& s, int64_t b, R& r) {
  using Ops = CellOps<C>;
  constexpr int NS = Ops::S;
  const BwdStep<A>& a = s.a;
  const int64_t H = a.H, row = a.t * a.B + b;
  A* dn = s.dn + row * H;
  const A* ln = s.ln + row * s.ld + s.off;
  if (!is_live(a.lengths, a.t, b)) {  // the whole block takes this branch
    for (int64_t j = r.first(); j < H; j += r.stride()) {
      dn[j] = A(0);
      s.dc_ln[b * H + j] = A(0);
    }
    return;
  }
  const bool drop = reset_after(a.k, a.lengths, a.B, b, a.t);
  for (int64_t j = r.first(); j < H; j += r.stride()) {
    A dh_keep, sv[NS > 0 ? NS : 1];
    const A dh = bwd_dh_in(a, b, j, drop, &dh_keep);
    for (int k = 0; k < NS; ++k) sv[k] = a.saved[row * NS * H + k * H + j];
    dn[j] = Ops::out_bwd(dh, sv);
  }
  A m1, m2;
  row_ln_bwd_means(dn, s.gain, ln, H, r, &m1, &m2);
  const A rstd = ln[H];
  for (int64_t j = r.first(); j < H; j += r.stride())
    s.dc_ln[b * H + j] = rstd * (dn[j] * s.gain[j] - m1 - ln[j] * m2);
}

}  // namespace cuda
}  // namespace fusedrnn
