// The pointwise equations of every recurrent cell, once, for the CPU loop and the CUDA kernels.
//
// Framework-free on purpose: no torch, no std:: math, only <cmath>, so that nvcc can compile the
// same functions into device code (HOST_DEVICE) and the CPU backend can inline them into its
// parallel loops. Everything here works on ONE hidden unit j of ONE batch row b:
//
//   x[g]   input-side pre-activation of gate g at unit j: xw[t, b, g*H + j] (b_ih included)
//   hh[g]  recurrent pre-activation of gate g at unit j: (W_hh h_prev + b_hh)[b, g*H + j]
//          (kept apart from x because GRU's n gate needs r * (W_hn h + b_hn))
//
// Gate order is torch.nn's: LSTM (i, f, g, o), GRU (r, z, n). Callers load bf16/half values and
// cast them to float before calling; arithmetic runs in T = float or double.
//
// Forward  <cell>_fwd(x, hh, h_prev, c_prev, &h, &c, saved)
//   h       new hidden state at unit j (LSTM: o * tanh(c), BEFORE the optional projection)
//   c       new cell state (LSTM only; others leave it untouched)
//   saved   kSaved[cell] values that backward needs besides the states (see each cell)
// Backward <cell>_bwd(dh, dc, saved, h, h_prev, c_prev, c, dx, &dhh_last, &dh_prev, &dc_prev)
//   dh, dc  gradient w.r.t. the new h (unprojected) and the new c at unit j
//   dx[g]   gradient w.r.t. x[g] (= w.r.t. hh[g] for every gate except GRU's n)
//   dhh_last  gradient w.r.t. hh[G-1]: GRU's n gate gives dx[2] * r, the other cells dx[G-1]
//   dh_prev   the part of dL/dh_prev that does NOT go through W_hh (GRU: dh * z, else 0)
//   dc_prev   dL/dc_prev (LSTM only)
// The recurrent part of dL/dh_prev (dhh @ W_hh) and the weight gradients are GEMMs done by the
// caller.
#pragma once

#include <cmath>

#ifdef __CUDACC__
#define HOST_DEVICE __host__ __device__
#else
#define HOST_DEVICE
#endif

// The cell math is forced inline: the CPU loops vectorise a unit loop only when every call in it
// is inlined, and GCC's own heuristics stopped inlining fr_fast_expf once the translation unit
// grew (the LayerNorm cells' instantiations): the LSTM forward ran 4-5x slower, out-of-line.
#if defined(__CUDACC__)
#define FR_INLINE __forceinline__
#elif defined(__GNUC__)
#define FR_INLINE inline __attribute__((always_inline))
#else
#define FR_INLINE inline
#endif

namespace fusedrnn {

// Overloads instead of std::exp / std::tanh: nvcc device code cannot call std:: math, and the C
// names keep float arithmetic in float (::exp on a float would silently run in double).
//
// On the host, float uses branch-free polynomial versions instead of libm: glibc's tanhf costs
// ~35 ns and neither call vectorizes, which made the pointwise pass slower than the per-step
// GEMM; these inline into the CPU loops and vectorize (a few ulp, see the limits below).
// double keeps libm (float64 is the accuracy reference, not a speed target).
#if !defined(__CUDA_ARCH__)
// exp: Cody-Waite reduction x = n ln2 + r, degree-6 polynomial for e^r (Cephes expf), 2^n built
// in the exponent bits. Max relative error 8e-8 on [-87, 88]; +inf above, 0 below (NaN passes).
FR_INLINE float fr_fast_expf(float x_in) {
  float x = x_in > 88.3762626647949f ? 88.3762626647949f : x_in;
  x = x < -87.3365478515625f ? -87.3365478515625f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to integer
  const float n = (x * 1.44269504088896341f + magic) - magic;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // a bit cast, not a union or memcpy: those make the loop's "omp simd" lanes spill to memory
  const float two_n = __builtin_bit_cast(float, (static_cast<int>(n) + 127) << 23);
  // past the clamps, libm's values: +inf above the overflow point, 0 below the smallest normal
  // result (so sigmoid(-inf) = 0, not a denormal); NaN fails both tests and stays NaN
  const float e = p * two_n;
  const float hi = x_in > 88.3762626647949f ? __builtin_inff() : e;
  return x_in < -87.3365478515625f ? 0.0f : hi;
}
// tanh: odd rational minimax approximation on [-7.9, 7.9] (Eigen's float tanh), x itself for
// |x| < 4e-4. Max relative error 3.3e-7.
FR_INLINE float fr_fast_tanhf(float x) {
  const float c = 7.90531110763549805f;
  float xc = x > c ? c : x;
  xc = xc < -c ? -c : xc;
  const float x2 = xc * xc;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  const float t = xc * p / q;  // unconditional, so that the select below vectorizes
  const float ax = x < 0.0f ? -x : x;
  return ax < 0.0004f ? x : t;
}
#endif

HOST_DEVICE FR_INLINE float fr_exp(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  return fr_fast_expf(x);
#endif
}
HOST_DEVICE FR_INLINE double fr_exp(double x) { return ::exp(x); }
HOST_DEVICE FR_INLINE float fr_tanh(float x) {
#if defined(__CUDA_ARCH__)
  return ::tanhf(x);
#else
  return fr_fast_tanhf(x);
#endif
}
HOST_DEVICE FR_INLINE double fr_tanh(double x) { return ::tanh(x); }

template <typename T>
HOST_DEVICE FR_INLINE T fr_sigmoid(T x) {
  return T(1) / (T(1) + fr_exp(-x));
}

// relu written so that NaN propagates like torch.relu (NaN < 0 is false).
template <typename T>
HOST_DEVICE FR_INLINE T fr_relu(T x) {
  return x < T(0) ? T(0) : x;
}

// Number of gate blocks G and of saved activations per unit, per cell.
enum class Cell { RNN_TANH = 0, RNN_RELU = 1, LSTM = 2, GRU = 3, LN_LSTM = 4, LN_GRU = 5 };
// Every cell, once: dispatch switches and explicit instantiations expand X(CELL) for each.
#define FUSEDRNN_CELLS(X) X(RNN_TANH) X(RNN_RELU) X(LSTM) X(GRU) X(LN_LSTM) X(LN_GRU)
HOST_DEVICE constexpr int num_gates(Cell c) {
  return (c == Cell::LSTM || c == Cell::LN_LSTM) ? 4
         : (c == Cell::GRU || c == Cell::LN_GRU) ? 3 : 1;
}
HOST_DEVICE constexpr int num_saved(Cell c) {
  return c == Cell::LN_LSTM ? 5
         : (c == Cell::LSTM || c == Cell::GRU || c == Cell::LN_GRU) ? 4 : 0;
}
// The cell carries a cell state c besides h (LSTM).
HOST_DEVICE constexpr bool has_cell_state(Cell c) { return c == Cell::LSTM || c == Cell::LN_LSTM; }
// The gradient w.r.t. the recurrent pre-activation of the last gate (dhh_last) differs from the
// input-side one (dx[G-1]): GRU's n = tanh(x_n + r * hh_n). The loops then keep it apart for the
// recurrent GEMMs (dh_prev, dW_hh).
HOST_DEVICE constexpr bool recurrent_grad_differs(Cell c) {
  return c == Cell::GRU || c == Cell::LN_GRU;
}
// Row-wise normalisation (the LayerNorm cells). The per-unit contract above becomes per-row
// where these hold; the loops own whole rows, so they run the reductions (kLnEps, biased
// variance) and the cell's per-unit functions around them. The extra per-layer parameters come
// as the op's cell_params (python/fusedrnn/ops/cells.py, each Cell's cell_params), in this order:
//   norm_recurrent: the row of W_hh h_prev (all G*H values) is layer-normalised and scaled by
//     cell_params[0] [G*H] before b_hh is added: hh = LN(W_hh h_prev) * gain + b_hh.
//   norm_state: the new cell state's row (H values) is layer-normalised, scaled by
//     cell_params[1] [H] and shifted by cell_params[2] [H] into n; fwd computes the gates and
//     c (not h), then out(saved, n) gives h; backward: out_bwd(dh, saved) = dL/dn, and bwd gets
//     dc with everything that reaches c through n already added by the loop.
HOST_DEVICE constexpr bool norm_recurrent(Cell c) {
  return c == Cell::LN_LSTM || c == Cell::LN_GRU;
}
HOST_DEVICE constexpr bool norm_state(Cell c) { return c == Cell::LN_LSTM; }
constexpr double kLnEps = 1e-5;
// The op's cell_params of a cell: how many, and the size of the k-th in units of H.
HOST_DEVICE constexpr int num_cell_params(Cell c) {
  return (norm_recurrent(c) ? 1 : 0) + (norm_state(c) ? 2 : 0);
}
HOST_DEVICE constexpr int cell_param_units(Cell c, int k) {
  return k == 0 && norm_recurrent(c) ? num_gates(c) : 1;
}
// The CPU forward saves the cell's activations (kSaved values per unit) for backward instead of
// letting it recompute them, where that keeps training memory at or below torch.nn's (which keeps
// the LSTM's gates too): the LSTM. The other cells recompute (saving would exceed torch.nn's).
HOST_DEVICE constexpr bool saves_activations(Cell c) { return c == Cell::LSTM; }
// The cell takes the op's w_hr projection (torch.nn's proj_size): the LSTM.
HOST_DEVICE constexpr bool supports_projection(Cell c) { return c == Cell::LSTM; }

// ---------------------------------------------------------------------------------------------
// Elman RNN: h = act(x + hh). Nothing saved: the derivative is a function of h itself.

template <typename T>
HOST_DEVICE FR_INLINE void rnn_tanh_fwd(const T* x, const T* hh, T /*h_prev*/, T /*c_prev*/, T* h,
                                     T* /*c*/, T* /*saved*/) {
  *h = fr_tanh(x[0] + hh[0]);
}

template <typename T>
HOST_DEVICE FR_INLINE void rnn_tanh_bwd(T dh, T /*dc*/, const T* /*saved*/, T h, T /*h_prev*/,
                                     T /*c_prev*/, T /*c*/, T* dx, T* dhh_last, T* dh_prev,
                                     T* /*dc_prev*/) {
  dx[0] = dh * (T(1) - h * h);
  *dhh_last = dx[0];
  *dh_prev = T(0);
}

template <typename T>
HOST_DEVICE FR_INLINE void rnn_relu_fwd(const T* x, const T* hh, T /*h_prev*/, T /*c_prev*/, T* h,
                                     T* /*c*/, T* /*saved*/) {
  *h = fr_relu(x[0] + hh[0]);
}

template <typename T>
HOST_DEVICE FR_INLINE void rnn_relu_bwd(T dh, T /*dc*/, const T* /*saved*/, T h, T /*h_prev*/,
                                     T /*c_prev*/, T /*c*/, T* dx, T* dhh_last, T* dh_prev,
                                     T* /*dc_prev*/) {
  // torch's threshold_backward: zero gradient where the output is <= 0 (a NaN output passes
  // the gradient through, as there)
  dx[0] = h <= T(0) ? T(0) : dh;
  *dhh_last = dx[0];
  *dh_prev = T(0);
}

// ---------------------------------------------------------------------------------------------
// LSTM: c = sigmoid(f) c_prev + sigmoid(i) tanh(g); h = sigmoid(o) tanh(c).
// saved = the activated gates (i, f, g, o); backward also needs c_prev and c (the caller keeps
// the cell states of every step).

// The cell's own new c from its saved gates (i, f, g, ...) and c_prev: what backward needs when
// the carried c is not the cell's (zoneout mixes it with the old one).
template <typename T>
HOST_DEVICE FR_INLINE T lstm_own_c(const T* saved, T c_prev) {
  return saved[1] * c_prev + saved[0] * saved[2];
}

template <typename T>
HOST_DEVICE FR_INLINE void lstm_fwd(const T* x, const T* hh, T /*h_prev*/, T c_prev, T* h, T* c,
                                 T* saved) {
  const T i = fr_sigmoid(x[0] + hh[0]);
  const T f = fr_sigmoid(x[1] + hh[1]);
  const T g = fr_tanh(x[2] + hh[2]);
  const T o = fr_sigmoid(x[3] + hh[3]);
  saved[0] = i;
  saved[1] = f;
  saved[2] = g;
  saved[3] = o;
  const T c_new = lstm_own_c(saved, c_prev);
  *c = c_new;
  *h = o * fr_tanh(c_new);
}

// The LSTM's gate gradients from dct = dL/dc (every path) and d_o = dL/d(sigmoid(o)).
template <typename T>
HOST_DEVICE FR_INLINE void lstm_gates_bwd(T dct, T d_o, const T* saved, T c_prev, T* dx,
                                       T* dhh_last, T* dh_prev, T* dc_prev) {
  const T i = saved[0], f = saved[1], g = saved[2], o = saved[3];
  dx[0] = dct * g * i * (T(1) - i);
  dx[1] = dct * c_prev * f * (T(1) - f);
  dx[2] = dct * i * (T(1) - g * g);
  dx[3] = d_o * o * (T(1) - o);
  *dhh_last = dx[3];
  *dh_prev = T(0);
  *dc_prev = dct * f;
}

template <typename T>
HOST_DEVICE FR_INLINE void lstm_bwd(T dh, T dc, const T* saved, T /*h*/, T /*h_prev*/, T c_prev,
                                 T c, T* dx, T* dhh_last, T* dh_prev, T* dc_prev) {
  const T o = saved[3];
  const T tc = fr_tanh(c);  // recomputed: one tanh is cheaper than saving another [T, B, H]
  const T dct = dc + dh * o * (T(1) - tc * tc);
  lstm_gates_bwd(dct, dh * tc, saved, c_prev, dx, dhh_last, dh_prev, dc_prev);
}

// ---------------------------------------------------------------------------------------------
// GRU: r = sigmoid(x_r + hh_r); z = sigmoid(x_z + hh_z); n = tanh(x_n + r * hh_n);
//      h = (1 - z) n + z h_prev.
// saved = (r, z, n, hh_n): hh_n (= W_hn h_prev + b_hn) is needed for dr and is not recoverable
// from the activations.

template <typename T>
HOST_DEVICE FR_INLINE void gru_fwd(const T* x, const T* hh, T h_prev, T /*c_prev*/, T* h, T* /*c*/,
                                T* saved) {
  const T r = fr_sigmoid(x[0] + hh[0]);
  const T z = fr_sigmoid(x[1] + hh[1]);
  const T n = fr_tanh(x[2] + r * hh[2]);
  *h = (T(1) - z) * n + z * h_prev;
  saved[0] = r;
  saved[1] = z;
  saved[2] = n;
  saved[3] = hh[2];
}

template <typename T>
HOST_DEVICE FR_INLINE void gru_bwd(T dh, T /*dc*/, const T* saved, T /*h*/, T h_prev, T /*c_prev*/,
                                T /*c*/, T* dx, T* dhh_last, T* dh_prev, T* /*dc_prev*/) {
  const T r = saved[0], z = saved[1], n = saved[2], hn = saved[3];
  const T dn = dh * (T(1) - z) * (T(1) - n * n);  // w.r.t. the pre-activation of n
  dx[0] = dn * hn * r * (T(1) - r);
  dx[1] = dh * (h_prev - n) * z * (T(1) - z);
  dx[2] = dn;
  *dhh_last = dn * r;
  *dh_prev = dh * z;
}

// ---------------------------------------------------------------------------------------------
// LayerNorm LSTM (Ba et al. 2016 as Haste implements it): the LSTM on hh = LN(W_hh h) * gain +
// b_hh (norm_recurrent), with h = sigmoid(o) tanh(n), n = LN(c) * ln_c_weight + ln_c_bias
// (norm_state: the loop computes n between fwd and out). saved = (i, f, g, o, tanh(n)).

template <typename T>
HOST_DEVICE FR_INLINE void ln_lstm_fwd(const T* x, const T* hh, T /*h_prev*/, T c_prev, T* h, T* c,
                                    T* saved) {
  saved[0] = fr_sigmoid(x[0] + hh[0]);
  saved[1] = fr_sigmoid(x[1] + hh[1]);
  saved[2] = fr_tanh(x[2] + hh[2]);
  saved[3] = fr_sigmoid(x[3] + hh[3]);
  saved[4] = T(0);  // tanh(n), set by out
  *c = lstm_own_c(saved, c_prev);
  *h = T(0);  // h needs the row's normalised c: out
}

template <typename T>
HOST_DEVICE FR_INLINE T ln_lstm_out(T* saved, T n) {
  saved[4] = fr_tanh(n);
  return saved[3] * saved[4];
}

template <typename T>
HOST_DEVICE FR_INLINE T ln_lstm_out_bwd(T dh, const T* saved) {  // dL/dn
  return dh * saved[3] * (T(1) - saved[4] * saved[4]);
}

template <typename T>
HOST_DEVICE FR_INLINE void ln_lstm_bwd(T dh, T dc, const T* saved, T /*h*/, T /*h_prev*/, T c_prev,
                                    T /*c*/, T* dx, T* dhh_last, T* dh_prev, T* dc_prev) {
  lstm_gates_bwd(dc, dh * saved[4], saved, c_prev, dx, dhh_last, dh_prev, dc_prev);
}

// The cells without norm_state have no output stage; those without a cell state no own c.
template <typename T>
HOST_DEVICE FR_INLINE T no_out(T* /*saved*/, T /*n*/) { return T(0); }
template <typename T>
HOST_DEVICE FR_INLINE T no_own_c(const T* /*saved*/, T c_prev) { return c_prev; }
template <typename T>
HOST_DEVICE FR_INLINE T no_out_bwd(T /*dh*/, const T* /*saved*/) { return T(0); }

// ---------------------------------------------------------------------------------------------
// Compile-time dispatch for loops written once for every cell (CPU time loop, CUDA launchers).

template <Cell C>
struct CellOps;

#define FUSEDRNN_CELL_OPS(CELL, FWD, BWD, OUT, OUT_BWD, OWN_C)                          \
  template <>                                                                           \
  struct CellOps<Cell::CELL> {                                                          \
    static constexpr int G = num_gates(Cell::CELL);                                     \
    static constexpr int S = num_saved(Cell::CELL);                                     \
    /* traits the shared loops read instead of testing the cell's name */               \
    static constexpr bool kHasC = has_cell_state(Cell::CELL);                           \
    static constexpr bool kSplitRec = recurrent_grad_differs(Cell::CELL);               \
    static constexpr bool kNormRec = norm_recurrent(Cell::CELL);                        \
    static constexpr bool kNormState = norm_state(Cell::CELL);                          \
    template <typename T>                                                               \
    HOST_DEVICE FR_INLINE static T out(T* saved, T n) { return OUT(saved, n); }         \
    template <typename T>                                                               \
    HOST_DEVICE FR_INLINE static T out_bwd(T dh, const T* saved) {                      \
      return OUT_BWD(dh, saved);                                                        \
    }                                                                                   \
    template <typename T>                                                               \
    HOST_DEVICE FR_INLINE static T own_c(const T* saved, T c_prev) {                    \
      return OWN_C(saved, c_prev);                                                      \
    }                                                                                   \
    template <typename T>                                                               \
    HOST_DEVICE FR_INLINE static void fwd(const T* x, const T* hh, T h_prev, T c_prev, T* h, \
                                          T* c, T* saved) {                             \
      FWD(x, hh, h_prev, c_prev, h, c, saved);                                          \
    }                                                                                   \
    template <typename T>                                                               \
    HOST_DEVICE FR_INLINE static void bwd(T dh, T dc, const T* saved, T h, T h_prev, T c_prev, \
                                          T c, T* dx, T* dhh_last, T* dh_prev, T* dc_prev) { \
      BWD(dh, dc, saved, h, h_prev, c_prev, c, dx, dhh_last, dh_prev, dc_prev);         \
    }                                                                                   \
  };

FUSEDRNN_CELL_OPS(RNN_TANH, rnn_tanh_fwd, rnn_tanh_bwd, no_out, no_out_bwd, no_own_c)
FUSEDRNN_CELL_OPS(RNN_RELU, rnn_relu_fwd, rnn_relu_bwd, no_out, no_out_bwd, no_own_c)
FUSEDRNN_CELL_OPS(LSTM, lstm_fwd, lstm_bwd, no_out, no_out_bwd, lstm_own_c)
FUSEDRNN_CELL_OPS(GRU, gru_fwd, gru_bwd, no_out, no_out_bwd, no_own_c)
// LN_GRU's per-unit body is the GRU's (its difference is the row-normalised hh)
FUSEDRNN_CELL_OPS(LN_LSTM, ln_lstm_fwd, ln_lstm_bwd, ln_lstm_out, ln_lstm_out_bwd,
                  lstm_own_c)
FUSEDRNN_CELL_OPS(LN_GRU, gru_fwd, gru_bwd, no_out, no_out_bwd, no_own_c)
#undef FUSEDRNN_CELL_OPS

}  // namespace fusedrnn
