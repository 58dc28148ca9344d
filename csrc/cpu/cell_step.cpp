// One step of a cell with its input projection, for streaming inference through the nn cells
// (B small, one call per time step). At B = 1 a step is a few microseconds of overhead around
// ~0.5 us of arithmetic, so everything here avoids fixed costs: the two products are our own
// GEMVs on the torch.nn weight layout (rows of W_ih [G*H, I] and W_hh [G*H, H] are contiguous:
// dot products vectorised over k), not two BLAS calls; the pre-activations live in a per-thread
// scratch buffer, not in tensors; the only allocations are the outputs. Larger batches keep one
// BLAS GEMM per product (it reads each weight once for all rows).
//
// The kernels are compiled for AVX-512, AVX2+FMA and baseline x86-64; each call runs the set the
// fused loops run (isa.cpp). "no-trapping-math" lets GCC if-convert the selects of the cell
// math (clamps, relu) so the unit loop vectorises; it changes no result. "fp-contract=fast" lets
// the dot products use FMA (one rounding instead of two, as any BLAS does). Both come before every
// include so that cells.h's functions get the same options as the kernels that inline them (GCC
// does not inline across a mismatch).
#pragma GCC optimize("no-trapping-math", "fp-contract=fast")

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernel.h"
#include "recurrence.h"

namespace fusedrnn {
namespace cpu {

namespace {

// Batches up to this size run the fused GEMV, which re-reads the weights for every row; above it
// one GEMM per product reads them once.
constexpr int64_t kGemvMaxRows = 2;
// Weights (W_ih and W_hh) from this size up are split over the threads by units (see run());
// at 512 KiB (RNN, H = 256) the split gained nothing on the Zen 5 (5.3-6.8 vs 5.3-5.8 us).
constexpr int64_t kSplitBytes = int64_t(1) << 20;

template <typename T>
struct StepArgs {
  const T *x, *w_ih, *b_ih, *w_hh, *b_hh, *h, *c;  // b_ih, b_hh, c may be null
  T *h_new, *c_new;                                 // c_new null unless LSTM
  T *gx, *gh;                                       // scratch: [rows, G*H] pre-activations
  int64_t B, I, H;
  bool gemv;       // false: gx, gh already hold the projections (BLAS path)
  bool rev;        // walk the weights backwards (see run())
  int64_t j0, j1;  // the units this call computes (all: 0, H; a thread's share: see run())
};

// GCC vectors of one register of the instruction set the function is compiled for: VB = 64 bytes
// (zmm) for AVX-512, 32 (ymm) for AVX2, 16 (xmm) for the portable set. A 64-byte vector on AVX2
// is lowered to a pair of ymm that GCC keeps on the stack: the accumulators of the dot products
// then live in memory (3.7 GFLOP/s at H = 256 on Zen 3). Written out rather than "omp simd
// reduction", which ends each dot product by spilling the vector and adding its lanes one by one.
template <typename T, int VB>
struct Vec {
  typedef T V __attribute__((vector_size(VB), aligned(sizeof(T))));
  static constexpr int W = VB / int(sizeof(T));
  // integer lanes of T's width, for shuffle masks
  using I_ = std::conditional_t<sizeof(T) == 8, int64_t, int32_t>;
  typedef I_ M __attribute__((vector_size(VB)));
  // A fixed tree over the lanes: lane i += lane i + w for w = W/2, ..., 1. In registers (a
  // rotation by a constant mask and an add per level): the scalar version went through the
  // stack, a chain of store-to-load forwards per row that was most of a B = 1 step (Zen 5, perf).
  template <int w, int... L>
  static constexpr M rotation(std::integer_sequence<int, L...>) {
    return M{I_((L + w) & (W - 1))...};
  }
  template <int w = W / 2>
  static inline __attribute__((always_inline)) T sum(V v) {
    if constexpr (w >= 1) {
      constexpr M m = rotation<w>(std::make_integer_sequence<int, W>{});
      return sum<w / 2>(v + __builtin_shuffle(v, m));
    } else {
      return v[0];
    }
  }
};

// out[r..r+R-1] = bias + W[r..r+R-1, :] . v, R = 4 or 1. R weight rows share each load of v, and
// every row keeps two accumulators (even and odd vectors of k): 2R independent FMA chains, enough
// to cover the FMA latency (4 cycles, 2 per cycle) on both AVX2 and AVX-512 machines.
template <int R, int VB, typename T>
inline __attribute__((always_inline)) void dot_rows(const T* W, int64_t r, int64_t K, const T* v,
                                                    const T* bias, T* out) {
  using V = typename Vec<T, VB>::V;
  constexpr int L = Vec<T, VB>::W;
  const T* w = W + r * K;
  V acc[R], acc2[R];
  for (int i = 0; i < R; ++i) acc[i] = acc2[i] = V{};
  int64_t k = 0;
  for (; k + 2 * L <= K; k += 2 * L) {
    const V x = *reinterpret_cast<const V*>(v + k);
    const V x2 = *reinterpret_cast<const V*>(v + k + L);
    for (int i = 0; i < R; ++i) {
      acc[i] += *reinterpret_cast<const V*>(w + i * K + k) * x;
      acc2[i] += *reinterpret_cast<const V*>(w + i * K + k + L) * x2;
    }
  }
  for (; k + L <= K; k += L) {
    const V x = *reinterpret_cast<const V*>(v + k);
    for (int i = 0; i < R; ++i) acc[i] += *reinterpret_cast<const V*>(w + i * K + k) * x;
  }
  for (int i = 0; i < R; ++i) {
    T s = Vec<T, VB>::sum(acc[i] + acc2[i]);
    for (int64_t kk = k; kk < K; ++kk) s += w[i * K + kk] * v[kk];
    out[r + i] = s + (bias ? bias[r + i] : T(0));
  }
}

// out[r] = bias[r] + W[r, :] . v for r < N, four rows at a time. `rev` walks the rows last to
// first; every row's sum is computed the same way in either order (bitwise equal results).
template <int VB, typename T>
inline __attribute__((always_inline)) void gemv(const T* W, int64_t N, int64_t K, const T* v,
                                                const T* bias, T* out, bool rev) {
  const int64_t N4 = N / 4 * 4;
  if (!rev) {
    for (int64_t r = 0; r < N4; r += 4) dot_rows<4, VB>(W, r, K, v, bias, out);
    for (int64_t r = N4; r < N; ++r) dot_rows<1, VB>(W, r, K, v, bias, out);
  } else {
    for (int64_t r = N - 1; r >= N4; --r) dot_rows<1, VB>(W, r, K, v, bias, out);
    for (int64_t r = N4 - 4; r >= 0; r -= 4) dot_rows<4, VB>(W, r, K, v, bias, out);
  }
}

// The G gate values of unit j from per-gate row pointers (gates are H apart in memory; cells of
// up to 4 gates). Each gate is loaded only where the cell has it.
template <int G, typename T>
inline __attribute__((always_inline)) void load_gates(const T* p0, const T* p1, const T* p2,
                                                      const T* p3, int64_t j, T* out) {
  static_assert(G >= 1 && G <= 4, "cell_step's unit loop takes cells of 1 to 4 gates");
  out[0] = p0[j];
  if constexpr (G > 1) out[1] = p1[j];
  if constexpr (G > 2) out[2] = p2[j];
  if constexpr (G > 3) out[3] = p3[j];
}

// Row by row: the projections (GEMV path) then cells.h's equations over the units.
template <Cell C, int VB, typename T>
inline __attribute__((always_inline)) void step_impl(const StepArgs<T>& a) {
  using Ops = CellOps<C>;
  constexpr int G = Ops::G;
  const int64_t H = a.H, GH = G * H;
  for (int64_t b = 0; b < a.B; ++b) {
    T* gx = a.gemv ? a.gx : a.gx + b * GH;
    T* gh = a.gemv ? a.gh : a.gh + b * GH;
    // the rows of gate g for units [j0, j1): g * H + j0 ... (no lambda here: a lambda is a
    // function of its own, compiled without this function's target ISA, and ran 4x slower)
    if (a.gemv) {
      const int64_t nj = a.j1 - a.j0;
      for (int64_t s = 0; s < 2 * G; ++s) {
        // forward order: W_ih's gates then W_hh's; reverse (a.rev): all of it backwards
        const int64_t q = a.rev ? 2 * G - 1 - s : s;
        const bool hh = q >= G;
        const int64_t r0 = (hh ? q - G : q) * H + a.j0, K = hh ? H : a.I;
        const T* w = (hh ? a.w_hh : a.w_ih) + r0 * K;
        const T* v = hh ? a.h + b * H : a.x + b * a.I;
        const T* bias = hh ? a.b_hh : a.b_ih;
        gemv<VB>(w, nj, K, v, bias ? bias + r0 : nullptr, (hh ? gh : gx) + r0, a.rev);
      }
    }
    const T* hp = a.h + b * H;
    const T* cp = Ops::kHasC ? a.c + b * H : nullptr;
    T* hn = a.h_new + b * H;
    T* cn = Ops::kHasC ? a.c_new + b * H : nullptr;
    // per-gate pointers with constant indices, so that the compiler keeps the gates in
    // registers and vectorises the unit loop (an x[k] = gx[k * H + j] loop stayed scalar)
    const int64_t o1 = G > 1 ? H : 0, o2 = G > 2 ? 2 * H : 0, o3 = G > 3 ? 3 * H : 0;
#pragma GCC ivdep
    for (int64_t j = a.j0; j < a.j1; ++j) {
      T x[G], g[G], saved[Ops::S > 0 ? Ops::S : 1];
      load_gates<G>(gx, gx + o1, gx + o2, gx + o3, j, x);
      load_gates<G>(gh, gh + o1, gh + o2, gh + o3, j, g);
      T c_prev = T(0);
      if constexpr (Ops::kHasC) c_prev = cp[j];
      T h_out, c_out = c_prev;
      Ops::fwd(x, g, hp[j], c_prev, &h_out, &c_out, saved);
      if constexpr (Ops::kHasC) cn[j] = c_out;
      hn[j] = h_out;
    }
  }
}

// One function per cell, dtype and instruction set, chosen at run time by the same rule as the
// fused loops (isa.cpp: the CPU, or FUSEDRNN_CPU_ISA). Not GCC's target_clones: its resolver for
// "arch=x86-64-v3" tests the CPU *model*, and on an AMD EPYC (Zen 3, AVX2 + FMA) it picked the
// SSE2 default, which ran the step 3-4x slower than torch.nn (3.7 GFLOP/s at H = 256).
#if defined(__GNUC__) && defined(__x86_64__)
#define FUSEDRNN_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define FUSEDRNN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define FUSEDRNN_HAVE_X86_CLONES 1
#else
#define FUSEDRNN_TARGET_AVX512
#define FUSEDRNN_TARGET_AVX2
#define FUSEDRNN_HAVE_X86_CLONES 0
#endif

template <typename T>
using StepFn = void (*)(const StepArgs<T>&);

#define FUSEDRNN_STEP_FN(CELL)                                                          \
  template <typename T>                                                                 \
  FUSEDRNN_TARGET_AVX512 void step_avx512_##CELL(const StepArgs<T>& a) {                \
    step_impl<Cell::CELL, 64, T>(a);                                                    \
  }                                                                                     \
  template <typename T>                                                                 \
  FUSEDRNN_TARGET_AVX2 void step_avx2_##CELL(const StepArgs<T>& a) {                    \
    step_impl<Cell::CELL, 32, T>(a);                                                    \
  }                                                                                     \
  template <typename T>                                                                 \
  void step_base_##CELL(const StepArgs<T>& a) {                                         \
    step_impl<Cell::CELL, 16, T>(a);                                                    \
  }
FUSEDRNN_CELLS(FUSEDRNN_STEP_FN)
#undef FUSEDRNN_STEP_FN

// 0 = avx512, 1 = avx2, 2 = portable: the set kernels_f32() runs
int isa_index() {
  const char* name = kernels_f32().name;
  if (FUSEDRNN_HAVE_X86_CLONES && std::strcmp(name, "avx512") == 0) return 0;
  if (FUSEDRNN_HAVE_X86_CLONES && std::strcmp(name, "avx2") == 0) return 1;
  return 2;
}

template <typename T>
void step_dispatch(Cell cell, const StepArgs<T>& a) {
  const int isa = isa_index();
#define FUSEDRNN_STEP_CASE(CELL)                                                         \
  case Cell::CELL: {                                                                     \
    static constexpr StepFn<T> fns[3] = {&step_avx512_##CELL<T>, &step_avx2_##CELL<T>,   \
                                         &step_base_##CELL<T>};                          \
    return fns[isa](a);                                                                  \
  }
  switch (cell) { FUSEDRNN_CELLS(FUSEDRNN_STEP_CASE) }
#undef FUSEDRNN_STEP_CASE
}

template <typename T>
const T* ptr_or_null(const OptTensor& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

template <typename T>
void run(Cell cell, const Tensor& x, const Tensor& w_ih, const OptTensor& b_ih,
         const Tensor& w_hh, const OptTensor& b_hh, const Tensor& h, const OptTensor& c,
         Tensor& h_new, Tensor& c_new) {
  const int64_t B = x.size(0), I = x.size(1), H = h.size(1), GH = num_gates(cell) * H;
  const bool gemv = B <= kGemvMaxRows;
  // per-thread scratch, grown once: a step allocates nothing but its outputs
  thread_local std::vector<T> scratch;
  const size_t need = size_t(2 * (gemv ? 1 : B) * GH);
  if (scratch.size() < need) scratch.resize(need);
  StepArgs<T> a{x.data_ptr<T>(), w_ih.data_ptr<T>(), ptr_or_null<T>(b_ih), w_hh.data_ptr<T>(),
                ptr_or_null<T>(b_hh), h.data_ptr<T>(), ptr_or_null<T>(c), h_new.data_ptr<T>(),
                c_new.defined() ? c_new.data_ptr<T>() : nullptr, scratch.data(),
                scratch.data() + need / 2, B, I, H, gemv, false, 0, H};
  // Streaming reads the same weights every step. When they are about the size of L2 (LSTM,
  // H = 256, float32: 2 MiB) a fixed order evicts each line just before it is needed again and
  // every step streams from L3; alternating the direction step by step starts each step with the
  // lines the previous one touched last, still in L2.
  thread_local bool flip = false;
  flip = !flip;
  a.rev = flip;
  if (!gemv) {
    auto project = [&](T* o, const T* in, const T* w, const T* bias, int64_t K) {
      if (bias)
        for (int64_t b = 0; b < B; ++b) std::copy(bias, bias + GH, o + b * GH);
      gemm_rows<T>(false, true, B, GH, K, in, K, w, K, bias ? T(1) : T(0), o, GH);
    };
    project(a.gx, a.x, a.w_ih, a.b_ih, I);  // [B, G*H]
    project(a.gh, a.h, a.w_hh, a.b_hh, H);  // [B, G*H]
  }
  // Weights larger than a core's L2 (LSTM H = 256: 2 MiB) stream from L3 every step on one
  // thread. Split by units, each thread reads only its units' rows of every gate (its share
  // stays in its own L2 from step to step) and runs the cell on them; each row's sum is computed
  // as on one thread (bitwise equal results). Units in multiples of 16 (a row group of gemv, a
  // vector of the unit loop).
  const int64_t wbytes = GH * (I + H) * int64_t(sizeof(T));
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), H / 16);
  if (gemv && threads >= 2 && wbytes >= kSplitBytes && !at::in_parallel_region()) {
    const int64_t per = (H / 16 + threads - 1) / threads * 16;
    at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        StepArgs<T> mine = a;
        mine.j0 = std::min(H, t * per);
        mine.j1 = t + 1 == threads ? H : std::min(H, (t + 1) * per);
        if (mine.j0 < mine.j1) step_dispatch<T>(cell, mine);
      }
    });
    return;
  }
  step_dispatch<T>(cell, a);
}

}  // namespace

// The op's body, with an undefined c' for the cells without one (the op returns an empty tensor
// there, as its schema cannot return None; the direct binding returns None: one allocation less).
std::tuple<Tensor, Tensor> cell_step_impl(c10::string_view mode, const Tensor& x,
                                          const Tensor& w_ih, const OptTensor& b_ih,
                                          const Tensor& w_hh, const OptTensor& b_hh,
                                          const Tensor& h, const OptTensor& c) {
  const Cell cell = parse_mode(mode);
  TORCH_CHECK(num_cell_params(cell) == 0, "fusedrnn: cell_step does not implement mode ",
              std::string(mode), " (a row-normalised cell); use recurrence_fwd with T = 1");
  const int64_t G = num_gates(cell);
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble,
              "fusedrnn: cell_step supports float32 and float64, got ", dt);
  TORCH_CHECK(x.dim() == 2 && h.dim() == 2 && w_ih.dim() == 2 && w_hh.dim() == 2,
              "fusedrnn: cell_step expects x [B, I], h [B, H], w_ih [G*H, I], w_hh [G*H, H]");
  const int64_t B = x.size(0), H = h.size(1), GH = G * H;
  TORCH_CHECK(h.size(0) == B, "fusedrnn: h must have ", B, " rows like x, got ", h.size(0));
  TORCH_CHECK(w_ih.size(0) == GH && w_ih.size(1) == x.size(1), "fusedrnn: w_ih must have shape [",
              GH, ", ", x.size(1), "], got ", w_ih.sizes());
  TORCH_CHECK(w_hh.size(0) == GH && w_hh.size(1) == H, "fusedrnn: w_hh must have shape [", GH,
              ", ", H, "], got ", w_hh.sizes());
  const bool lstm = has_cell_state(cell);
  const bool has_c = c.has_value() && c->defined();
  TORCH_CHECK(has_c == lstm, "fusedrnn: cell_step needs c exactly for cells with a cell state "
              "(LSTM), mode ", std::string(mode));
  for (const Tensor* t : {&w_ih, &w_hh, &h}) {
    TORCH_CHECK(t->scalar_type() == dt, "fusedrnn: cell_step arguments must all have dtype ", dt,
                ", got ", t->scalar_type());
  }
  if (has_c)
    TORCH_CHECK(c->sizes() == h.sizes() && c->scalar_type() == dt,
                "fusedrnn: c must have shape ", h.sizes(), " and dtype ", dt, ", got ",
                c->sizes(), " ", c->scalar_type());
  for (const OptTensor* bias : {&b_ih, &b_hh}) {
    if (bias->has_value() && (*bias)->defined())
      TORCH_CHECK((*bias)->numel() == GH && (*bias)->scalar_type() == dt,
                  "fusedrnn: biases must have ", GH, " elements and dtype ", dt, ", got ",
                  (*bias)->sizes(), " ", (*bias)->scalar_type());
  }

  // contiguous() returns the tensor itself (no copy) in the usual case
  const Tensor xc = x.contiguous(), hc = h.contiguous(), wi = w_ih.contiguous(),
               wh = w_hh.contiguous();
  const OptTensor bi = b_ih.has_value() && b_ih->defined() ? OptTensor(b_ih->contiguous())
                                                           : OptTensor();
  const OptTensor bh = b_hh.has_value() && b_hh->defined() ? OptTensor(b_hh->contiguous())
                                                           : OptTensor();
  const OptTensor cc = has_c ? OptTensor(c->contiguous()) : OptTensor();
  Tensor h_new = alloc({B, H}, h.options());
  Tensor c_new = lstm ? alloc({B, H}, h.options()) : Tensor();
  if (dt == at::kDouble)
    run<double>(cell, xc, wi, bi, wh, bh, hc, cc, h_new, c_new);
  else
    run<float>(cell, xc, wi, bi, wh, bh, hc, cc, h_new, c_new);
  return {h_new, c_new};
}

std::tuple<Tensor, Tensor> cell_step(c10::string_view mode, const Tensor& x, const Tensor& w_ih,
                                     const OptTensor& b_ih, const Tensor& w_hh,
                                     const OptTensor& b_hh, const Tensor& h, const OptTensor& c) {
  auto r = cell_step_impl(mode, x, w_ih, b_ih, w_hh, b_hh, h, c);
  if (!std::get<1>(r).defined()) std::get<1>(r) = at::empty({0}, h.options());
  return r;
}

}  // namespace cpu
}  // namespace fusedrnn
