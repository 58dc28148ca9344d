// The fused forward and backward time loops of one thread's rows (kernel.h), written once for every
// cell and instruction set. NOT a normal header: an ISA file (isa_*.cpp) includes it inside its own
// namespace, after `#pragma GCC target(...)` and after defining
//
//   template <typename T> struct Vec {   // one SIMD register of T
//     static constexpr int W;            // lanes
//     static constexpr int ACC;          // accumulator registers the micro-kernel may use
//     using R = ...;
//     static R zero(); static R load(const T*); static void store(T*, R);
//     static R bcast(T); static R fma(R a, R b, R c);  // a * b + c
//   };
//
// so that every function here is compiled for that ISA under a name of its own (no ODR clash
// between the copies). The cell math is cells.h's CellOps, called per unit on a tile in L1.
// (The including file includes <algorithm>, <cstring>, <vector> and kernel.h first.)

#ifndef FUSEDRNN_SIMD
#define FUSEDRNN_SIMD _Pragma("GCC ivdep")
#endif

// Panel geometry for a product over G gate blocks: U vectors of W units per gate, so that a panel
// is NB = G * U vectors wide (about 4: enough independent accumulators per row to hide the FMA
// latency, few enough that MR rows of them fit the register file).
constexpr int units_per_panel(int G) { return G >= 3 ? 1 : 4 / G; }

template <typename T, int G>
struct Blocking {
  static constexpr int W = Vec<T>::W;
  static constexpr int U = units_per_panel(G);
  static constexpr int NB = G * U;                     // vectors per k in a panel
  static constexpr int UW = U * W;                     // units of one gate per panel
  static constexpr int MR_ = Vec<T>::ACC / NB;         // rows per register block
  static constexpr int MR = MR_ < 1 ? 1 : (MR_ > 8 ? 8 : MR_);
};

inline int64_t num_panels(int64_t Nu, int64_t uw) { return (Nu + uw - 1) / uw; }

template <typename T>
size_t pack_size_t(int G, int64_t Nu, int64_t K) {
  const int64_t uw = int64_t(units_per_panel(G)) * Vec<T>::W;
  return size_t(num_panels(Nu, uw) * K * G * uw);
}

template <typename T>
void pack_t(int G, const T* src, int64_t ld, bool trans, int64_t Nu, int64_t K, T* dst) {
  constexpr int W = Vec<T>::W;
  const int64_t U = units_per_panel(G), uw = U * W, P = num_panels(Nu, uw);
  for (int64_t p = 0; p < P; ++p)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t g = 0; g < G; ++g)
        for (int64_t i = 0; i < uw; ++i) {
          const int64_t n = p * uw + i;  // unit within the block; g * U + i / W is the vector
          const int64_t col = g * Nu + n;
          *dst++ = n < Nu ? (trans ? src[col * ld + k] : src[k * ld + col]) : T(0);
        }
}

// How the micro-kernel reads its left operand: element (r, k) of MR rows. Either one pointer per
// row (a[r][k], rows contiguous in k: the recurrences, the input projections) or a column-major
// block (p[k * ld + r]: a transposed operand such as dy^T in a weight gradient, read in place).
template <typename T>
struct ColsA {
  const T* p;
  int64_t ld;
};
template <typename T>
inline __attribute__((always_inline)) T a_at(const T* const* a, int r, int64_t k) {
  return a[r][k];
}
template <typename T>
inline __attribute__((always_inline)) T a_at(const ColsA<T>& a, int r, int64_t k) {
  return a.p[k * a.ld + r];
}

// For MR rows r: sum_k a(r, k) * panel(k, .), the NB = G * U vectors stored at
// out[r] + g * gstride + u * W (gate g, unit vector u): the register-blocked micro-kernel. Every
// row is accumulated the same way (k in order, one FMA per k) whatever MR is and however `a` is
// laid out, which is what makes the results batch-invariant.
template <typename T, int NB, int U, int MR, typename A>
inline __attribute__((always_inline)) void mk_tile(const A& a, int64_t K, const T* panel,
                                                   T* const* out, int64_t gstride) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int W = V::W;
  R acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NB; ++n) acc[r][n] = V::zero();
  for (int64_t k = 0; k < K; ++k) {
    const T* pk = panel + k * (NB * W);
    R b[NB];
    for (int n = 0; n < NB; ++n) b[n] = V::load(pk + n * W);
    for (int r = 0; r < MR; ++r) {
      const R ar = V::bcast(a_at<T>(a, r, k));
      for (int n = 0; n < NB; ++n) acc[r][n] = V::fma(ar, b[n], acc[r][n]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NB; ++n) V::store(out[r] + (n / U) * gstride + (n % U) * W, acc[r][n]);
}

// mk_tile for m <= MR rows (the remainder of a thread's rows).
template <typename T, int NB, int U, int MR, typename A>
inline void mk_rows(int m, const A& a, int64_t K, const T* panel, T* const* out,
                    int64_t gstride) {
  if constexpr (MR == 1) {
    mk_tile<T, NB, U, 1>(a, K, panel, out, gstride);
  } else {
    if (m == MR)
      mk_tile<T, NB, U, MR>(a, K, panel, out, gstride);
    else
      mk_rows<T, NB, U, MR - 1>(m, a, K, panel, out, gstride);
  }
}

// mk_rows into a contiguous tile [m][NB * W] (for products whose outputs need an epilogue that
// must not write past the last unit).
template <typename T, int NB, int U, int MR, typename A>
inline void mk_rows_tile(int m, const A& a, int64_t K, const T* panel, T* tile) {
  T* out[MR];
  for (int r = 0; r < MR; ++r) out[r] = tile + r * NB * Vec<T>::W;
  mk_rows<T, NB, U, MR>(m, a, K, panel, out, int64_t(U) * Vec<T>::W);
}

// Number of rows of `rs` that are live at step t (rows sorted by length, longest first).
inline int64_t live_prefix(const int64_t* len, RowSet rs, int64_t t) {
  int64_t lo = 0, hi = rs.n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (len[rs.rows[mid]] > t) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// Software prefetch of n elements from p into L2 (read or, with kWrite, for a store). A step's
// live rows are not contiguous in memory when lengths come in any order (rows b = 0, 2, 4, ...):
// the hardware prefetchers lose the stream at every row, and each row's first lines missed to
// L3 or DRAM. Issued for all live rows before the step's products, they arrive while it runs
// (an unsorted packed batch, 16 of 32 rows live: from the full batch's time to its share).
template <bool kWrite = false, typename T>
inline void prefetch(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t o = 0; o < n * int64_t(sizeof(T)); o += 64) __builtin_prefetch(c + o, kWrite, 2);
}

// The step a row processed before t, or -1 when its state came from h0/c0 (t is its first step).
inline int64_t prev_step(int64_t t, int64_t len, bool reverse) {
  return reverse ? (t + 1 < len ? t + 1 : -1) : t - 1;
}

// ---- row-wise normalisation (cells.h norm_recurrent / norm_state) -------------------------------
// A thread owns whole rows, so a row's reductions are local. Sums run in a fixed order (8 partial
// sums by position, then added in turn, block after block): they vectorise and give the same
// result on every thread count and batch composition.

template <typename T>
inline T sum8(const T* p, int64_t n) {
  constexpr int K = 8;
  T s[K] = {};
  int64_t j = 0;
  for (; j + K <= n; j += K)
    for (int k = 0; k < K; ++k) s[k] += p[j + k];
  for (int k = 0; j < n; ++j, ++k) s[k] += p[j];
  T t = s[0];
  for (int k = 1; k < K; ++k) t += s[k];
  return t;
}

template <typename T>
inline T dot8(const T* p, const T* q, int64_t n) {
  constexpr int K = 8;
  T s[K] = {};
  int64_t j = 0;
  for (; j + K <= n; j += K)
    for (int k = 0; k < K; ++k) s[k] += p[j + k] * q[j + k];
  for (int k = 0; j < n; ++j, ++k) s[k] += p[j] * q[j];
  T t = s[0];
  for (int k = 1; k < K; ++k) t += s[k];
  return t;
}

// Mean and 1 / sqrt(var + eps) (biased variance, two passes) of a row of `blocks` blocks of `len`
// values, `stride` apart.
template <typename T>
inline void row_moments(const T* v, int blocks, int64_t len, int64_t stride, T& mean, T& rstd) {
  const T n = T(blocks * len);
  T s = T(0);
  for (int g = 0; g < blocks; ++g) s += sum8(v + g * stride, len);
  mean = s / n;
  constexpr int K = 8;
  T q = T(0);
  for (int g = 0; g < blocks; ++g) {
    const T* p = v + g * stride;
    T acc[K] = {};
    int64_t j = 0;
    for (; j + K <= len; j += K)
      for (int k = 0; k < K; ++k) acc[k] += (p[j + k] - mean) * (p[j + k] - mean);
    for (int k = 0; j < len; ++j, ++k) acc[k] += (p[j] - mean) * (p[j] - mean);
    for (int k = 0; k < K; ++k) q += acc[k];
  }
  rstd = T(1) / std::sqrt(q / n + T(kLnEps));
}

// The row normalised in place: v = (v - mean) * rstd; returns rstd.
template <typename T>
inline T row_normalise(T* v, int blocks, int64_t len, int64_t stride) {
  T mean, rstd;
  row_moments(v, blocks, len, stride, mean, rstd);
  for (int g = 0; g < blocks; ++g) {
    T* p = v + g * stride;
    FUSEDRNN_SIMD
    for (int64_t j = 0; j < len; ++j) p[j] = (p[j] - mean) * rstd;
  }
  return rstd;
}

// A gate's recurrent pre-activation from the product p (row-normalised for norm_recurrent cells).
template <class Ops, typename T>
inline T rec_pre(T p, const T* gain, const T* bias, int64_t k) {
  if constexpr (Ops::kNormRec)
    return p * gain[k] + bias[k];
  else
    return p + bias[k];
}

// Whether row b's state carried into step t (tp: the step processed before it, -1 = h0/c0)
// restarts from zeros: a segment starts at t (forward) or at tp (reverse: the state passes from
// tp = t + 1 down to t; a reversed sequence's first step starts from h0, never reset).
template <typename T>
inline bool carry_reset(const T* reset, int64_t B, int64_t b, int64_t t, int64_t tp,
                        bool reverse) {
  const int64_t at = reverse ? tp : t;
  return reset != nullptr && at >= 0 && reset[at * B + b] != T(0);
}

// ---- forward ------------------------------------------------------------------------------------

template <Cell C, typename T>
void fwd_loop(const FwdLoop<T>& a, RowSet rs) {
  using Ops = CellOps<C>;
  using Bk = Blocking<T, Ops::G>;
  constexpr int G = Ops::G, MR = Bk::MR, NB = Bk::NB, UW = Bk::UW, W = Bk::W;
  constexpr int S = Ops::S > 0 ? Ops::S : 1;
  const int64_t TT = a.steps, B = a.B, H = a.H, Ho = a.Ho, GH = G * H;
  const int64_t np = num_panels(H, UW);
  const bool proj = a.wr_pack != nullptr;
  using BkP = Blocking<T, 1>;  // the projection's panels
  // the gate pre-activations W_hh h_prev of the thread's rows at one step, gate blocks Hp apart
  // (H rounded up to whole panels, so a panel's padding lanes never overwrite the next gate)
  const int64_t Hp = np * UW, GHp = G * Hp;
  // this thread's panels and units (all of them unless the units are split, see UnitSlice; the
  // split runs without a projection, so Ho = H there)
  const UnitSlice us = rs.units;
  const int64_t p0 = np * us.part / us.parts, p1 = np * (us.part + 1) / us.parts;
  const int64_t j0 = std::min(p0 * UW, H), j1 = std::min(p1 * UW, H);
  const int64_t y0 = us.parts > 1 ? j0 : 0, y1 = us.parts > 1 ? j1 : Ho;
  std::vector<T> pre(rs.n * GHp);
  const bool saving = a.cs != nullptr || a.act != nullptr;
  std::vector<T> sink(saving ? (S + 1) * H : 0);  // see the unit loop
  std::vector<T> rbuf(proj ? rs.n * H : 0);      // unprojected h (o * tanh c) of every row
  std::vector<T> zeros(std::max(H, Ho), T(0));
  std::vector<T> no_bias(a.bias ? 0 : GH, T(0));
  const T* biasv = a.bias ? a.bias : no_bias.data();  // b_hh, or zeros: one code path
  const T* arow[MR];
  T* orow[MR];
  std::vector<const T*> hprev(rs.n);
  // row-normalised cells (cells.h): their parameters, and a row's activations until out()
  const T *ln_rec = a.cell_params[0], *ln_sw = a.cell_params[1], *ln_sb = a.cell_params[2];
  std::vector<T> srow(Ops::kNormState ? S * H : 0), crow(Ops::kNormState ? H : 0);

  for (int64_t s = 0; s < TT; ++s) {
    const int64_t t = a.reverse ? TT - 1 - s : s;
    const int64_t nl = live_prefix(a.len, rs, t);
    for (int64_t i = nl; i < rs.n; ++i) {  // past the end: zero output and saved state
      const int64_t b = rs.rows[i];
      std::fill(a.y + (t * B + b) * Ho + y0, a.y + (t * B + b) * Ho + y1, T(0));
      if (a.cs) {
        T* cb = a.cs + (t * B + b) * a.ws_stride;
        std::fill(cb + j0, cb + j1, T(0));
      }
      if (a.act)
        for (int k = 0; k < S; ++k) {
          T* ak = a.act + (t * B + b) * a.ws_stride + k * H;
          std::fill(ak + j0, ak + j1, T(0));
        }
    }
    for (int64_t i = 0; i < nl; ++i) {
      const int64_t b = rs.rows[i];
      const int64_t tp = prev_step(t, a.len[b], a.reverse);
      hprev[i] = tp >= 0 ? a.y + (tp * B + b) * Ho : a.h0 + b * Ho;
      const int64_t row = t * B + b;
      prefetch(a.xw + row * GH, GH);
      prefetch<true>(a.y + row * Ho, Ho);
      if (a.cs) prefetch<true>(a.cs + row * a.ws_stride, H);
      if (a.act) prefetch<true>(a.act + row * a.ws_stride, S * H);
      if (carry_reset(a.reset, B, b, t, tp, a.reverse)) {  // a new segment: zero state
        hprev[i] = zeros.data();
        if constexpr (Ops::kHasC) std::fill(a.c + b * H + j0, a.c + b * H + j1, T(0));
      }
    }
    // 1. pre = h_prev W_hh^T: each panel (all gates of UW units) over every live row, so the
    //    panel stays in L1 while the rows stream past it
    for (int64_t p = p0; p < p1; ++p) {
      const T* panel = a.w_pack + p * Ho * NB * W;
      for (int64_t i0 = 0; i0 < nl; i0 += MR) {
        const int m = int(std::min<int64_t>(MR, nl - i0));
        for (int r = 0; r < m; ++r) {
          arow[r] = hprev[i0 + r];
          orow[r] = pre.data() + (i0 + r) * GHp + p * UW;
        }
        mk_rows<T, NB, Bk::U, MR>(m, arow, Ho, panel, orow, Hp);
      }
    }
    if constexpr (Ops::kNormRec)  // LN over each row's G*H products
      for (int64_t i = 0; i < nl; ++i) row_normalise(pre.data() + i * GHp, G, H, Hp);
    // 2. the cell on every unit of every live row, while pre is in L1
    for (int64_t i = 0; i < nl; ++i) {
      const int64_t b = rs.rows[i];
      const T* x = a.xw + (t * B + b) * GH;
      const T* hh = pre.data() + i * GHp;
      const T* hp = proj ? zeros.data() : hprev[i];  // only GRU reads h_prev
      T* cb = Ops::kHasC ? a.c + b * H : nullptr;
      // what backward reads (training); a part not saved goes to `sink`, so that the unit loop
      // stores unconditionally: a store under a run-time condition became a masked store
      // (vmaskmovps), microcoded on AMD Zen 3
      T* csb = Ops::kHasC && a.cs ? a.cs + (t * B + b) * a.ws_stride : sink.data();
      T* actb = a.act ? a.act + (t * B + b) * a.ws_stride : sink.data() + H;
      T* dst = proj ? rbuf.data() + i * H : a.y + (t * B + b) * Ho;
      // zoneout's keep-old mask of the row: h part (mixed here unless the projection comes
      // after the cell), c part
      const T* zrow = a.zo ? a.zo + (t * B + b) * a.zw : nullptr;
      const T* zh = proj ? zeros.data() : zrow;
      const T* zc = Ops::kHasC && zrow ? zrow + Ho : zeros.data();
      // compiled with and without zoneout, so that the plain loop stays as it was, and with and
      // without saving (inference stores only the state)
      auto units = [&](auto zoned, auto saving) {
        FUSEDRNN_SIMD
        for (int64_t j = j0; j < j1; ++j) {
          T xg[G], hg[G], saved[S];
          for (int g = 0; g < G; ++g) {
            xg[g] = x[g * H + j];
            hg[g] = rec_pre<Ops>(hh[g * Hp + j], ln_rec, biasv, g * H + j);
          }
          const T c_old = Ops::kHasC ? cb[j] : T(0);
          T c_new = c_old, h_new;
          Ops::fwd(xg, hg, hp[j], c_old, &h_new, &c_new, saved);
          if constexpr (Ops::kNormState) {  // h needs the row's LN of the cell's own c: below
            for (int k = 0; k < S; ++k) srow[k * H + j] = saved[k];
            crow[j] = c_new;
          }
          if constexpr (decltype(zoned)::value) {  // the state-carry rule, any cell
            h_new = zh[j] * hp[j] + (T(1) - zh[j]) * h_new;
            c_new = zc[j] * c_old + (T(1) - zc[j]) * c_new;
          }
          if constexpr (Ops::kHasC) {
            cb[j] = c_new;
            if constexpr (decltype(saving)::value) csb[j] = c_new;
          }
          if constexpr (Ops::S > 0 && decltype(saving)::value)
            for (int k = 0; k < S; ++k) actb[k * H + j] = saved[k];
          if constexpr (!Ops::kNormState) dst[j] = h_new;
        }
      };
      using Yes = std::true_type;
      using No = std::false_type;
      if (zrow)
        saving ? units(Yes{}, Yes{}) : units(Yes{}, No{});
      else
        saving ? units(No{}, Yes{}) : units(No{}, No{});
      if constexpr (Ops::kNormState) {  // h = out(saved, LN(c) * w + b) over the row's new c
        T mean, rstd;
        row_moments(crow.data(), 1, H, H, mean, rstd);
        FUSEDRNN_SIMD
        for (int64_t j = 0; j < H; ++j) {
          T saved[S];
          for (int k = 0; k < S; ++k) saved[k] = srow[k * H + j];
          const T h_new = Ops::out(saved, (crow[j] - mean) * rstd * ln_sw[j] + ln_sb[j]);
          dst[j] = zrow ? zh[j] * hp[j] + (T(1) - zh[j]) * h_new : h_new;  // zoneout as above
        }
      }
    }
    if (proj) {  // y[t] = r W_hr^T over the live rows
      constexpr int MRp = BkP::MR, NBp = BkP::NB, UWp = BkP::UW;
      alignas(64) T ptile[MRp * NBp * W];
      const T* prow[MRp];
      for (int64_t p = 0; p < num_panels(Ho, UWp); ++p) {
        const T* panel = a.wr_pack + p * H * NBp * W;
        const int64_t q0 = p * UWp;
        const int nq = int(std::min<int64_t>(UWp, Ho - q0));
        for (int64_t i0 = 0; i0 < nl; i0 += MRp) {
          const int m = int(std::min<int64_t>(MRp, nl - i0));
          for (int r = 0; r < m; ++r) prow[r] = rbuf.data() + (i0 + r) * H;
          mk_rows_tile<T, NBp, BkP::U, MRp>(m, prow, H, panel, ptile);
          for (int r = 0; r < m; ++r) {
            T* yb = a.y + (t * B + rs.rows[i0 + r]) * Ho + q0;
            std::memcpy(yb, ptile + r * NBp * W, sizeof(T) * nq);
            if (a.zo) {  // zoneout mixes the projected h with the carried one
              const T* zh = a.zo + (t * B + rs.rows[i0 + r]) * a.zw + q0;
              const T* hp = hprev[i0 + r] + q0;
              for (int q = 0; q < nq; ++q) yb[q] = zh[q] * hp[q] + (T(1) - zh[q]) * yb[q];
            }
          }
        }
      }
    }
    if (us.bar) us.bar->wait();  // this step's h of every unit, before the next step reads it
  }
  for (int64_t i = 0; i < rs.n; ++i) {  // h_T: the state after a row's last processed step
    const int64_t b = rs.rows[i], len = a.len[b];
    const int64_t last = len == 0 ? -1 : (a.reverse ? 0 : len - 1);
    const T* src = last >= 0 ? a.y + (last * B + b) * Ho : a.h0 + b * Ho;
    std::copy(src + y0, src + y1, a.h_T + b * Ho + y0);
  }
}

// ---- backward -----------------------------------------------------------------------------------

template <Cell C, typename T>
void bwd_loop(const BwdLoop<T>& a, RowSet rs) {
  using Ops = CellOps<C>;
  using Bk = Blocking<T, Ops::G>;
  using BkH = Blocking<T, 1>;  // dh_prev = dg W_hh and dr = dhp W_hr: one block of units
  constexpr int G = Ops::G, NB = Bk::NB, UW = Bk::UW, W = Bk::W;
  constexpr int S = Ops::S > 0 ? Ops::S : 1;
  // cells with saved activations recompute them; the Elman cells differentiate through h itself
  constexpr bool kRecompute = Ops::S > 0;
  constexpr int MRH = BkH::MR, NBH = BkH::NB, UWH = BkH::UW;
  // rows per block of the whole step (its tiles of every product use sub-blocks of it)
  constexpr int MB = 8;
  const int64_t TT = a.steps, B = a.B, H = a.H, Ho = a.Ho, GH = G * H;
  const int64_t np = num_panels(H, UW);
  const bool proj = a.wr_pack != nullptr;
  std::vector<T> zeros(std::max(H, Ho), T(0));
  std::vector<T> no_bias(a.bias ? 0 : GH, T(0));
  const T* biasv = a.bias ? a.bias : no_bias.data();
  const int64_t Hp = np * UW, GHp = G * Hp;  // gate blocks Hp apart, as in the forward
  std::vector<T> pre(MB * GHp);  // W_hh h_prev of the block's rows
  std::vector<T> dgr(MB * GH);   // recurrent-side gate gradients of the block's rows
  std::vector<T> drb(proj ? MB * H : 0);  // dL/d(o * tanh c) of the block's rows
  // row-normalised cells (cells.h): parameters, each block row's 1/std of W_hh h_prev, and per
  // row: activations and c, LN(c), dL/dLN(c)
  const T *ln_rec = a.cell_params[0], *ln_sw = a.cell_params[1], *ln_sb = a.cell_params[2];
  T rstd_rec[MB];
  constexpr bool kNS = Ops::kNormState;
  std::vector<T> srow(kNS ? S * H : 0), crow(kNS ? H : 0), nhat(kNS ? H : 0), dnh(kNS ? H : 0);
  alignas(64) T htile[MRH * NBH * W];
  const T* arow[MB];
  const T* hprev[MB];
  bool cut[MB];  // the row's carried state was reset at this step: no gradient goes further

  // out[r] (+)= in[r] @ packed (1 block of Nu units, K) for m <= MB rows, tiles of MRH rows
  auto rows_times = [&](int m, const T* const* in, int64_t K, const T* packed, int64_t Nu,
                        T* const* out, bool accumulate) {
    for (int64_t p = 0; p < num_panels(Nu, UWH); ++p) {
      const T* panel = packed + p * K * NBH * W;
      const int64_t q0 = p * UWH;
      const int nq = int(std::min<int64_t>(UWH, Nu - q0));
      for (int i0 = 0; i0 < m; i0 += MRH) {
        const int mm = std::min(MRH, m - i0);
        mk_rows_tile<T, NBH, BkH::U, MRH>(mm, in + i0, K, panel, htile);
        for (int r = 0; r < mm; ++r) {
          T* o = out[i0 + r] + q0;
          const T* v = htile + r * NBH * W;
          if (accumulate) {
            FUSEDRNN_SIMD
            for (int j = 0; j < nq; ++j) o[j] += v[j];
          } else {
            std::memcpy(o, v, sizeof(T) * nq);
          }
        }
      }
    }
  };

  for (int64_t s = TT - 1; s >= 0; --s) {
    const int64_t t = a.reverse ? TT - 1 - s : s;
    const int64_t nl = live_prefix(a.len, rs, t);
    for (int64_t i = nl; i < rs.n; ++i) {  // past the end: no gradient; dh, dc pass through
      const int64_t row = t * B + rs.rows[i];
      std::fill(a.dxw + row * GH, a.dxw + (row + 1) * GH, T(0));
      if (a.dhn) std::fill(a.dhn + row * H, a.dhn + (row + 1) * H, T(0));
      if constexpr (Ops::kNormRec) {
        std::fill(a.drec + row * GH, a.drec + (row + 1) * GH, T(0));
        std::fill(a.drec_gain + row * GH, a.drec_gain + (row + 1) * GH, T(0));
      }
      if constexpr (kNS) {
        std::fill(a.dstate_gain + row * H, a.dstate_gain + (row + 1) * H, T(0));
        std::fill(a.dstate_bias + row * H, a.dstate_bias + (row + 1) * H, T(0));
      }
      if (proj) {
        std::fill(a.r + row * H, a.r + (row + 1) * H, T(0));
        std::fill(a.dhp + row * Ho, a.dhp + (row + 1) * Ho, T(0));
      }
    }
    for (int64_t i = 0; i < nl; ++i) {  // what the step reads and writes (see prefetch)
      const int64_t row = t * B + rs.rows[i];
      if (!a.act) prefetch(a.xw + row * GH, GH);
      if (a.act) prefetch(a.act + row * a.ws_stride, S * H);
      if (a.cs) prefetch(a.cs + row * a.ws_stride, H);
      if (a.dy) prefetch(a.dy + row * Ho, Ho);
      prefetch(a.y + row * Ho, Ho);
      prefetch<true>(a.dxw + row * GH, GH);
    }
    for (int64_t i0 = 0; i0 < nl; i0 += MB) {
      const int m = int(std::min<int64_t>(MB, nl - i0));
      for (int r = 0; r < m; ++r) {
        const int64_t b = rs.rows[i0 + r];
        const int64_t tp = prev_step(t, a.len[b], a.reverse);
        cut[r] = carry_reset(a.reset, B, b, t, tp, a.reverse);
        hprev[r] = cut[r] ? zeros.data() : tp >= 0 ? a.y + (tp * B + b) * Ho : a.h0 + b * Ho;
      }
      // 1. the gate pre-activations W_hh h_prev, recomputed exactly as the forward did (with
      //    zoneout every cell that saved no activations recomputes: y holds the mixed h)
      if ((kRecompute || a.zo) && !a.act) {
        T* orow[MB];
        for (int64_t p = 0; p < np; ++p) {
          const T* panel = a.w_pack + p * Ho * NB * W;
          for (int r0 = 0; r0 < m; r0 += Bk::MR) {
            const int mm = std::min(Bk::MR, m - r0);
            for (int r = 0; r < mm; ++r) orow[r] = pre.data() + (r0 + r) * GHp + p * UW;
            mk_rows<T, NB, Bk::U, Bk::MR>(mm, hprev + r0, Ho, panel, orow, Hp);
          }
        }
        if constexpr (Ops::kNormRec)  // the forward's LN, bitwise
          for (int r = 0; r < m; ++r) rstd_rec[r] = row_normalise(pre.data() + r * GHp, G, H, Hp);
      }
      // 2. projection: dL/dh of the step (carried + from y) through W_hr; the carry restarts
      if (proj) {
        T* drow[MB];
        for (int r = 0; r < m; ++r) {
          const int64_t b = rs.rows[i0 + r], row = t * B + b;
          T* dhp = a.dhp + row * Ho;
          T* dhb = a.dh + b * Ho;
          const T* dyb = a.dy ? a.dy + row * Ho : zeros.data();
          if (a.zo) {  // zoneout: the kept part goes straight to h_prev
            const T* zh = a.zo + row * a.zw;
            FUSEDRNN_SIMD
            for (int64_t k = 0; k < Ho; ++k) {
              const T d = dhb[k] + dyb[k];
              dhp[k] = (T(1) - zh[k]) * d;
              dhb[k] = zh[k] * d;
            }
          } else {
            FUSEDRNN_SIMD
            for (int64_t k = 0; k < Ho; ++k) {
              dhp[k] = dhb[k] + dyb[k];
              dhb[k] = T(0);
            }
          }
          arow[r] = dhp;
          drow[r] = drb.data() + r * H;
        }
        rows_times(m, arow, Ho, a.wr_pack, H, drow, false);
      }
      // 3. the cell's backward on every unit of the block's rows
      for (int r = 0; r < m; ++r) {
        const int64_t b = rs.rows[i0 + r], row = t * B + b;
        const int64_t tp = prev_step(t, a.len[b], a.reverse);
        const T* xb = a.xw + row * GH;
        const T* pb = pre.data() + r * GHp;
        const T* c_prev = zeros.data();
        if (Ops::kHasC && !cut[r] && (tp >= 0 || a.c0))
          c_prev = tp >= 0 ? a.cs + (tp * B + b) * a.ws_stride : a.c0 + b * H;
        const T* c_now = Ops::kHasC ? a.cs + row * a.ws_stride : zeros.data();
        const T* actb = a.act ? a.act + row * a.ws_stride : nullptr;
        T* dhb = a.dh + b * Ho;
        T* dcb = Ops::kHasC ? a.dc + b * H : nullptr;
        T* dxb = a.dxw + row * GH;
        T* dgb = dgr.data() + r * GH;
        T* dhnb = a.dhn ? a.dhn + row * H : nullptr;
        // branch-free operands: with a projection dL/dh is dr, h_prev is not read, and the
        // recomputed o * tanh(c) goes to r; else dL/dh = carried + dy, and dh is overwritten
        // with the part that skips W_hh (the GEMM below adds the rest)
        const T* dh_a = proj ? drb.data() + r * H : dhb;
        const T* dh_b = proj || !a.dy ? zeros.data() : a.dy + row * Ho;
        const T* h_src = proj ? zeros.data() : a.y + row * Ho;
        const T* hp_src = proj ? zeros.data() : hprev[r];
        T* out_dst = proj ? a.r + row * H : dhb;
        // zoneout: the mask's kept share of dL/dh (dL/dc) goes to h_prev (c_prev) directly,
        // the rest into the cell (with a projection the h part was split in 2.)
        const T* zrow = a.zo ? a.zo + row * a.zw : nullptr;
        const T* zh = proj || !zrow ? zeros.data() : zrow;
        const T* zc = Ops::kHasC && zrow ? zrow + Ho : zeros.data();
        // the forward's activations of unit j recomputed, h and c as the cell made them
        auto refwd = [&](int64_t j, T* saved, T& h, T& c) {
          T x[G], g[G];
          for (int k = 0; k < G; ++k) {
            x[k] = xb[k * H + j];
            g[k] = rec_pre<Ops>(pb[k * Hp + j], ln_rec, biasv, k * H + j);
          }
          Ops::fwd(x, g, hp_src[j], c_prev[j], &h, &c, saved);
        };
        // the cell's backward of unit j from dL/dh and dL/dc of the carried state, and its
        // writes (zoned: the mask's kept share bypasses the cell); dc_own: norm_state's dL/dc
        // through n, all of it the cell's own c's
        auto cell_bwd = [&](auto zoned, int64_t j, T dh_in, T dc_in, T dc_own, const T* saved,
                            T h, T c) {
          T dx[G], dhh_last, dh_direct = T(0), dc_prev = T(0);
          T dh_keep = T(0), dc_keep = T(0);
          if constexpr (decltype(zoned)::value) {
            dh_keep = zh[j] * dh_in;
            dh_in = (T(1) - zh[j]) * dh_in;
            dc_keep = zc[j] * dc_in;
            dc_in = (T(1) - zc[j]) * dc_in;
          }
          if constexpr (kNS) dc_in += dc_own;
          Ops::bwd(dh_in, dc_in, saved, h, hp_src[j], c_prev[j], c, dx, &dhh_last, &dh_direct,
                   &dc_prev);
          if constexpr (decltype(zoned)::value) {
            dh_direct += dh_keep;
            dc_prev += dc_keep;
          }
          for (int k = 0; k < G; ++k) {
            dxb[k * H + j] = dx[k];
            dgb[k * H + j] = k == G - 1 ? dhh_last : dx[k];
          }
          if constexpr (Ops::kSplitRec) dhnb[j] = dhh_last;
          if constexpr (Ops::kHasC) dcb[j] = dc_prev;
          out_dst[j] = proj ? h : dh_direct;
        };
        // the unit loop, compiled reading the forward's saved activations, recomputing them,
        // and with zoneout, so that none carries a branch (it would not vectorise)
        auto units = [&](auto from_saved, auto recompute, auto zoned) {
          FUSEDRNN_SIMD
          for (int64_t j = 0; j < H; ++j) {
            T saved[S];
            T h = h_src[j], c = c_prev[j];
            if constexpr (decltype(from_saved)::value) {
              for (int k = 0; k < S; ++k) saved[k] = actb[k * H + j];
              // with zoneout the saved c is the mixed carry: the cell's own is rebuilt
              c = decltype(zoned)::value ? Ops::own_c(saved, c_prev[j]) : c_now[j];
            } else if constexpr (decltype(recompute)::value) {
              refwd(j, saved, h, c);
            }
            cell_bwd(zoned, j, dh_a[j] + dh_b[j], Ops::kHasC ? dcb[j] : T(0), T(0), saved, h, c);
          }
        };
        using Yes = std::true_type;
        using No = std::false_type;
        if constexpr (kNS) {
          // norm_state: the row's c first (its LN needs all of it), then dL/dn = out_bwd and
          // the LN's backward into dc, then the cell's backward (the cell's h is not read)
          FUSEDRNN_SIMD
          for (int64_t j = 0; j < H; ++j) {
            T saved[S];
            T h = T(0), c = c_prev[j];
            refwd(j, saved, h, c);
            for (int k = 0; k < S; ++k) srow[k * H + j] = saved[k];
            crow[j] = c;
          }
          T mean, rstd;
          row_moments(crow.data(), 1, H, H, mean, rstd);
          T* dsg = a.dstate_gain + row * H;
          T* dsb = a.dstate_bias + row * H;
          FUSEDRNN_SIMD
          for (int64_t j = 0; j < H; ++j) {
            T saved[S];
            for (int k = 0; k < S; ++k) saved[k] = srow[k * H + j];
            const T nh = (crow[j] - mean) * rstd;
            Ops::out(saved, nh * ln_sw[j] + ln_sb[j]);
            for (int k = 0; k < S; ++k) srow[k * H + j] = saved[k];
            // dL/dn from the cell's share of dL/dh (zoneout keeps the rest)
            const T dh_cell = (zrow ? T(1) - zh[j] : T(1)) * (dh_a[j] + dh_b[j]);
            const T dn = Ops::out_bwd(dh_cell, saved);
            dsb[j] = dn;
            dsg[j] = dn * nh;
            dnh[j] = dn * ln_sw[j];
            nhat[j] = nh;
          }
          const T m1 = sum8(dnh.data(), H) / T(H), m2 = dot8(dnh.data(), nhat.data(), H) / T(H);
          // dL/dc of the cell's own c: through n, plus the carried state's dc (its cell share;
          // dc_n is all the cell's, so it joins after the zoneout split)
          auto ns_units = [&](auto zoned) {
            FUSEDRNN_SIMD
            for (int64_t j = 0; j < H; ++j) {
              T saved[S];
              for (int k = 0; k < S; ++k) saved[k] = srow[k * H + j];
              const T dc_n = rstd * (dnh[j] - m1 - nhat[j] * m2);
              cell_bwd(zoned, j, dh_a[j] + dh_b[j], dcb[j], dc_n, saved, T(0), crow[j]);
            }
          };
          if (zrow)
            ns_units(Yes{});
          else
            ns_units(No{});
        } else if (zrow && actb) {
          units(Yes{}, No{}, Yes{});
        } else if (zrow) {
          units(No{}, Yes{}, Yes{});
        } else if (actb) {
          units(Yes{}, No{}, No{});
        } else {
          units(No{}, std::bool_constant<kRecompute>{}, No{});
        }
        arow[r] = dgb;
        if constexpr (Ops::kNormRec) {
          // dL/dhh (dgb) -> dL/d(W_hh h_prev) through the row's LN: what dh_prev and dW_hh need
          T* dr = a.drec + row * GH;
          T* dgn = a.drec_gain + row * GH;
          T s1 = T(0), s2 = T(0);
          for (int g = 0; g < G; ++g) {
            const T* ph = pb + g * Hp;  // LN(W_hh h_prev) of gate g
            FUSEDRNN_SIMD
            for (int64_t j = 0; j < H; ++j) {
              const T d = dgb[g * H + j];
              dgn[g * H + j] = d * ph[j];
              dr[g * H + j] = d * ln_rec[g * H + j];
            }
            s1 += sum8(dr + g * H, H);
            s2 += dot8(dr + g * H, ph, H);
          }
          const T m1 = s1 / T(GH), m2 = s2 / T(GH), rs = rstd_rec[r];
          for (int g = 0; g < G; ++g) {
            const T* ph = pb + g * Hp;
            FUSEDRNN_SIMD
            for (int64_t j = 0; j < H; ++j)
              dr[g * H + j] = rs * (dr[g * H + j] - m1 - ph[j] * m2);
          }
          arow[r] = dr;
        }
      }
      // 4. dh_prev += dg_rec W_hh, on the rows while their gate gradients are in L1
      T* dhrow[MB];
      for (int r = 0; r < m; ++r) dhrow[r] = a.dh + rs.rows[i0 + r] * Ho;
      rows_times(m, arow, GH, a.wb_pack, Ho, dhrow, true);
      if (a.clip > T(0)) {  // recurrent_grad_clip: what a live step sends back to its state
        const T lo = -a.clip, hi = a.clip;
        for (int r = 0; r < m; ++r) {
          const int64_t b = rs.rows[i0 + r];
          for (int64_t k = 0; k < Ho; ++k) dhrow[r][k] = std::min(hi, std::max(lo, dhrow[r][k]));
          if constexpr (Ops::kHasC)
            for (int64_t k = 0; k < H; ++k)
              a.dc[b * H + k] = std::min(hi, std::max(lo, a.dc[b * H + k]));
        }
      }
      for (int r = 0; r < m; ++r) {  // reset: the state came from zeros, nothing flows back
        if (!cut[r]) continue;
        std::fill_n(dhrow[r], Ho, T(0));
        if constexpr (Ops::kHasC) std::fill_n(a.dc + rs.rows[i0 + r] * H, H, T(0));
      }
    }
  }
}

#include "gemm_impl.h"

// ---- the kernel table ---------------------------------------------------------------------------

#define FUSEDRNN_CELL_CASE(CELL) \
  case Cell::CELL:               \
    return LOOP<Cell::CELL, T>(a, rs);

template <typename T>
void fwd_dispatch(Cell cell, const FwdLoop<T>& a, RowSet rs) {
#define LOOP fwd_loop
  switch (cell) { FUSEDRNN_CELLS(FUSEDRNN_CELL_CASE) }
#undef LOOP
}

template <typename T>
void bwd_dispatch(Cell cell, const BwdLoop<T>& a, RowSet rs) {
#define LOOP bwd_loop
  switch (cell) { FUSEDRNN_CELLS(FUSEDRNN_CELL_CASE) }
#undef LOOP
}
#undef FUSEDRNN_CELL_CASE

// The table of this ISA (constant-initialised data: reading it runs no code of this ISA).
template <typename T>
const IsaKernels<T> kKernels{FUSEDRNN_ISA_NAME, Vec<T>::W, &pack_size_t<T>, &pack_t<T>,
                             &fwd_dispatch<T>, &bwd_dispatch<T>, &rows_mm_t<T>};
