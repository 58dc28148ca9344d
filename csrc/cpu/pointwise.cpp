// Row kernels of the CPU time loops (see pointwise.h): the cell math of cells.h over the hidden
// units of each row. The unit loops vectorize; for float they are compiled for AVX-512, AVX2+FMA
// and baseline x86-64 (GCC target_clones picks one when the library loads), because the
// baseline SSE2 build of the polynomial exp/tanh was measured 10x slower than AVX-512 here.
//
// "no-trapping-math" lets GCC if-convert the selects of the cell math (clamps, relu, masks);
// it changes no result (unlike -ffast-math, nothing is reassociated).
#pragma GCC optimize("no-trapping-math")

#include "pointwise.h"

#include <type_traits>

namespace fusedrnn {
namespace cpu {

namespace {

// The G gate values of unit j from per-gate row pointers p[k] (gates are H apart in memory;
// constant indices so that the compiler keeps them in registers).
template <int G, typename T>
inline void load_gates(const T* p0, const T* p1, const T* p2, const T* p3, int64_t j, T* out) {
  out[0] = p0[j];
  if constexpr (G > 1) {
    out[1] = p1[j];
    out[2] = p2[j];
  }
  if constexpr (G > 3) out[3] = p3[j];
}

template <Cell C, typename T>
inline __attribute__((always_inline)) void fwd_rows_impl(const FwdRows<T>& a, int64_t b0,
                                                         int64_t b1) {
  using Ops = CellOps<C>;
  constexpr int G = Ops::G;
  constexpr bool kLstm = C == Cell::LSTM;
  const int64_t H = a.H, Ho = a.H_out, GH = G * H;
  const bool proj = a.r != nullptr;
  for (int64_t b = b0; b < b1; ++b) {
    const T* xr = a.xw_t + b * GH;
    const T* hr = a.hh + b * GH;
    T* hb = a.h + b * Ho;
    T* cb = kLstm ? a.c + b * H : nullptr;
    T* cs_b = kLstm ? a.cs_t + b * H : nullptr;
    // With a projection the unprojected h goes to r (the caller projects it), else to the
    // state and y; branch-free pointers keep the unit loop vectorizable.
    T* h_dst = proj ? a.r + b * H : hb;
    T* y_dst = proj ? a.r + b * H : a.y_t + b * Ho;
    const T* h_src = proj ? a.zeros : hb;  // only GRU reads h_prev (never projected)
    if (a.len && a.t >= a.len[b]) {
      // past the end (unsorted lengths): the state is kept and y is zero
      for (int64_t j = 0; j < H; ++j) {
        if constexpr (kLstm) cs_b[j] = cb[j];
        y_dst[j] = T(0);
      }
      continue;
    }
    const int64_t o1 = G > 1 ? H : 0, o2 = G > 2 ? 2 * H : 0, o3 = G > 3 ? 3 * H : 0;
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) {
      T x[G], g[G], saved[Ops::S > 0 ? Ops::S : 1];
      load_gates<G>(xr, xr + o1, xr + o2, xr + o3, j, x);
      load_gates<G>(hr, hr + o1, hr + o2, hr + o3, j, g);
      T c_prev = T(0);
      if constexpr (kLstm) c_prev = cb[j];
      T h_new, c_new = c_prev;
      Ops::fwd(x, g, h_src[j], c_prev, &h_new, &c_new, saved);
      if constexpr (kLstm) {
        cb[j] = c_new;
        cs_b[j] = c_new;
      }
      h_dst[j] = h_new;
      y_dst[j] = h_new;
    }
  }
}

template <Cell C, typename T>
inline __attribute__((always_inline)) void bwd_rows_impl(const BwdRows<T>& a, int64_t b0,
                                                         int64_t b1) {
  using Ops = CellOps<C>;
  constexpr int G = Ops::G, S = Ops::S;
  // cells with saved activations recompute them from xw and the recurrent pre-activations;
  // the Elman cells differentiate through h itself
  constexpr bool kRecompute = S > 0;
  constexpr bool kLstm = C == Cell::LSTM, kGru = C == Cell::GRU;
  const int64_t t = a.t, B = a.B, H = a.H, Ho = a.H_out, GH = G * H;
  const bool proj = a.r != nullptr;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t row = t * B + b;
    T* dx_b = a.dxw + row * GH;  // in: W_hh h_prev + b_hh; out: gate gradients
    T* dgh_b = kGru ? a.dgh + b * GH : nullptr;
    const int64_t len = a.len ? a.len[b] : a.T_len;
    if (a.masked && t >= len) {
      // past the end: no gradient into this step, dh and dc pass through unchanged
      for (int64_t i = 0; i < GH; ++i) dx_b[i] = T(0);
      if constexpr (kGru) {
        for (int64_t i = 0; i < GH; ++i) dgh_b[i] = T(0);
        for (int64_t j = 0; j < H; ++j) a.dhn[row * H + j] = T(0);
      }
      if (proj)
        for (int64_t j = 0; j < H; ++j) a.r[row * H + j] = T(0);
      continue;
    }
    // the step before t in processing order, or -1 where the state came from h0/c0
    const int64_t tp = a.reverse ? (t + 1 < len ? t + 1 : -1) : t - 1;
    const T* xb = a.xw + row * GH;
    const T* h_prev = tp >= 0 ? a.y + (tp * B + b) * Ho : a.h0 + b * Ho;
    const T* c_prev = a.zeros;
    if (kLstm && (tp >= 0 || a.c0)) c_prev = tp >= 0 ? a.cs + (tp * B + b) * H : a.c0 + b * H;
    T* dhb = a.dh + b * Ho;
    T* dcb = kLstm ? a.dc + b * H : nullptr;
    T* dhn_b = kGru ? a.dhn + row * H : nullptr;
    // Branch-free operands. With a projection (LSTM): dL/dh comes from dr, h_prev is not needed
    // and the recomputed o * tanh(c) goes to r; else dL/dh = carried + dy and dh is overwritten
    // with the part that skips W_hh (the caller adds the GEMM part).
    const T* dh_a = proj ? a.dr + b * H : dhb;
    const T* dh_b = proj || !a.dy ? a.zeros : a.dy + row * Ho;
    const T* h_src = proj ? a.zeros : a.y + row * Ho;
    const T* hp_src = proj ? a.zeros : h_prev;
    T* out_dst = proj ? a.r + row * H : dhb;
    const int64_t o1 = G > 1 ? H : 0, o2 = G > 2 ? 2 * H : 0, o3 = G > 3 ? 3 * H : 0;
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) {
      T saved[S > 0 ? S : 1], dx[G], dhh_last, dh_direct = T(0), dc_prev = T(0);
      const T hp = hp_src[j];
      const T cp = c_prev[j];
      T h = h_src[j], c = cp;
      if constexpr (kRecompute) {
        T x[G], g[G];
        load_gates<G>(xb, xb + o1, xb + o2, xb + o3, j, x);
        load_gates<G>(dx_b, dx_b + o1, dx_b + o2, dx_b + o3, j, g);
        Ops::fwd(x, g, hp, cp, &h, &c, saved);
      }
      T dc_in = T(0);
      if constexpr (kLstm) dc_in = dcb[j];
      Ops::bwd(dh_a[j] + dh_b[j], dc_in, saved, h, hp, cp, c, dx, &dhh_last, &dh_direct,
               &dc_prev);
      dx_b[j] = dx[0];
      if constexpr (G > 1) {
        dx_b[o1 + j] = dx[1];
        dx_b[o2 + j] = dx[2];
      }
      if constexpr (G > 3) dx_b[o3 + j] = dx[3];
      if constexpr (kGru) {
        dgh_b[j] = dx[0];
        dgh_b[o1 + j] = dx[1];
        dgh_b[o2 + j] = dhh_last;
        dhn_b[j] = dhh_last;
      }
      if constexpr (kLstm) dcb[j] = dc_prev;
      out_dst[j] = proj ? h : dh_direct;
    }
  }
}

}  // namespace

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FUSEDRNN_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FUSEDRNN_CLONES
#endif

// float row kernels, one multi-versioned function per cell and direction
#define FUSEDRNN_FLOAT_ROWS(CELL)                                                         \
  FUSEDRNN_CLONES void fwd_rows_f32_##CELL(const FwdRows<float>& a, int64_t b0,           \
                                           int64_t b1) {                                  \
    fwd_rows_impl<Cell::CELL, float>(a, b0, b1);                                          \
  }                                                                                       \
  FUSEDRNN_CLONES void bwd_rows_f32_##CELL(const BwdRows<float>& a, int64_t b0,           \
                                           int64_t b1) {                                  \
    bwd_rows_impl<Cell::CELL, float>(a, b0, b1);                                          \
  }                                                                                       \
  template <>                                                                             \
  void fwd_rows<Cell::CELL, float>(const FwdRows<float>& a, int64_t b0, int64_t b1) {     \
    fwd_rows_f32_##CELL(a, b0, b1);                                                       \
  }                                                                                       \
  template <>                                                                             \
  void bwd_rows<Cell::CELL, float>(const BwdRows<float>& a, int64_t b0, int64_t b1) {     \
    bwd_rows_f32_##CELL(a, b0, b1);                                                       \
  }                                                                                       \
  template <>                                                                             \
  void fwd_rows<Cell::CELL, double>(const FwdRows<double>& a, int64_t b0, int64_t b1) {   \
    fwd_rows_impl<Cell::CELL, double>(a, b0, b1);                                         \
  }                                                                                       \
  template <>                                                                             \
  void bwd_rows<Cell::CELL, double>(const BwdRows<double>& a, int64_t b0, int64_t b1) {   \
    bwd_rows_impl<Cell::CELL, double>(a, b0, b1);                                         \
  }

FUSEDRNN_FLOAT_ROWS(RNN_TANH)
FUSEDRNN_FLOAT_ROWS(RNN_RELU)
FUSEDRNN_FLOAT_ROWS(LSTM)
FUSEDRNN_FLOAT_ROWS(GRU)
#undef FUSEDRNN_FLOAT_ROWS

}  // namespace cpu
}  // namespace fusedrnn
