// The fused time loops of the CPU backend (v2): raw-pointer arguments and the per-ISA kernel table.
//
// Shape of the design (docs/cpu_backend.md): threads own disjoint sets of batch rows for the whole
// sequence, forward and backward, so no barrier sits inside the time loop; the recurrent weights
// are packed once per call into the register-blocked micro-kernel's panel layout; each step's
// recurrent product is computed tile by tile (rows x one panel of units of every gate) and the
// cell's pointwise body (cells.h) runs on the finished tile while it is in L1. The kernels are
// compiled once per instruction set (isa_avx512.cpp, isa_avx2.cpp, isa_base.cpp, all including
// loops_impl.h) and one is chosen at run time (isa.cpp).
//
// A row's arithmetic does not depend on which thread runs it, on the other rows of the batch or on
// where it falls in a register block: results are bitwise independent of the thread count and of
// the batch composition (for one instruction set).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>

#include "fusedrnn/cells.h"

namespace fusedrnn {
namespace cpu {

// The threads that share one row set by splitting its units (batch smaller than the thread count,
// B = 1 streaming) meet here after every step of the forward: a counting barrier that spins, then
// yields, so that an oversubscribed machine does not burn a time slice waiting.
struct StepBarrier {
  std::atomic<int> arrived{0}, generation{0};
  int n = 1;
  void wait() {
    const int gen = generation.load(std::memory_order_acquire);
    if (arrived.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
      arrived.store(0, std::memory_order_relaxed);
      generation.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spin = 0; generation.load(std::memory_order_acquire) == gen; ++spin) {
      if (spin < 4096) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  }
};

// Which units of its rows a thread runs: all of them (parts = 1), or slice `part` of `parts`
// equal slices of the weight panels, the threads meeting at `bar` after every step (forward
// only, no projection). Every unit's arithmetic is the same either way: the results are bitwise
// those of one thread.
struct UnitSlice {
  int part = 0, parts = 1;
  StepBarrier* bar = nullptr;
};

// The rows one thread owns, sorted by length, longest first: the live rows of any step are then a
// prefix of the list, whatever order the lengths come in.
struct RowSet {
  const int64_t* rows;
  int64_t n;
  UnitSlice units = {};
};

// Packed operand layout ("panels"): a product out[n] = sum_k a[k] * B(k, n) over N = G * Nu
// outputs (G blocks of Nu units, the gate blocks of a cell) is cut into panels of U * W units of
// every block (W = vector lanes, U = units_per_panel(G) vectors). A panel stores, for each k, the
// G * U vectors of B(k, .) contiguously, zero-padded past Nu, so the micro-kernel streams it.
//   B(k, n) = trans ? src[n * ld + k] : src[k * ld + n]
template <typename T>
struct FwdLoop {
  int64_t steps, B, H, Ho;  // Ho = P with a projection, else H
  bool reverse;
  const int64_t* len;   // [B], clamped to [0, T] (T for every row when no lengths were given)
  const T* xw;          // [T, B, G*H]
  const T* bias;        // [G*H] (b_hh) or null
  const T* h0;          // [B, Ho]
  const T* w_pack;      // W_hh^T packed: G blocks of H units, K = Ho
  const T* wr_pack;     // W_hr^T packed: 1 block of P units, K = H; null without projection
  T* y;                 // [T, B, Ho]
  T* h_T;               // [B, Ho]
  T* c;                 // [B, H] (cells with a cell state): c0 on entry, c_T on exit; else null
  // What backward reads, per step and row, ws_stride apart (null = not saved, inference):
  T* cs;                // [H] the cell state (cell-state cells; zero past the length)
  T* act;               // [S*H] the cell's saved activations (cells that save them), S blocks
  int64_t ws_stride;
  // the op's cell_params (cells.h norm_recurrent / norm_state say which), null past their number
  const T* cell_params[3] = {};
  // Per-step state carry (python/fusedrnn/ops/reference.py): reset [T, B] (nonzero: the state
  // carried across the segment boundary at step t restarts from zeros; see carry_reset) and the
  // zoneout keep-old mask zo [T, B, zw] (h part [Ho], then c part [H] for cell-state cells).
  const T* reset = nullptr;
  const T* zo = nullptr;
  int64_t zw = 0;
};

template <typename T>
struct BwdLoop {
  int64_t steps, B, H, Ho;
  bool reverse;
  const int64_t* len;   // [B] as in FwdLoop
  const T* xw;          // [T, B, G*H]
  const T* bias;        // [G*H] or null
  const T* y;           // [T, B, Ho] forward output (the previous states)
  const T* dy;          // [T, B, Ho] or null
  const T* h0;          // [B, Ho]
  const T* c0;          // [B, H] or null (zeros)
  const T* cs;          // as FwdLoop::cs / act / ws_stride: the forward's saved values; act null
  const T* act;         //   means the activations are recomputed
  int64_t ws_stride;
  const T* w_pack;      // as FwdLoop::w_pack: recomputes the gate pre-activations per tile
  const T* wb_pack;     // W_hh packed for dh_prev = dg W_hh: 1 block of Ho units, K = G*H
  const T* wr_pack;     // W_hr packed for dr = dh W_hr: 1 block of H units, K = P; or null
  T* dxw;               // [T, B, G*H] out: gate gradients (zero past the length)
  T* dhn;               // [T, B, H] out, cells whose recurrent-side gradient differs; else null
  T* dh;                // [B, Ho]: dh_T on entry, dh0 on exit
  T* dc;                // [B, H]: dc_T on entry, dc0 on exit (cell-state cells); else null
  T* dhp;               // [T, B, P] out (projection): dL/dh of every step; else null
  T* r;                 // [T, B, H] out (projection): o * tanh(c) of every step; else null
  T clip;               // recurrent_grad_clip, 0 = off
  const T* cell_params[3] = {};  // as FwdLoop
  // row-normalised cells (cells.h), per step and row, zero past the length; else null:
  T* drec = nullptr;         // [T, B, G*H] out (norm_recurrent): dL/d(W_hh h_prev), for dW_hh
  T* drec_gain = nullptr;    // [T, B, G*H] out (norm_recurrent): dL/dhh * LN(W_hh h_prev),
                             //   summed: d cell_params[0]
  T* dstate_gain = nullptr;  // [T, B, H] out (norm_state): dL/dn * LN(c), summed: d cell_params[1]
  T* dstate_bias = nullptr;  // [T, B, H] out (norm_state): dL/dn, summed: d cell_params[2]
  const T* reset = nullptr;  // as FwdLoop::reset / zo / zw
  const T* zo = nullptr;
  int64_t zw = 0;
};

template <typename T>
struct IsaKernels {
  const char* name;
  int lanes;  // W
  size_t (*pack_size)(int G, int64_t Nu, int64_t K);
  void (*pack)(int G, const T* src, int64_t ld, bool trans, int64_t Nu, int64_t K, T* dst);
  void (*fwd)(Cell cell, const FwdLoop<T>& a, RowSet rows);
  void (*bwd)(Cell cell, const BwdLoop<T>& a, RowSet rows);
  // out[i] = A_i @ B (+ bias | += out) for rows [i0, i1): gemm_impl.h rows_mm_t
  void (*rows_mm)(bool a_trans, const T* a, int64_t lda, int64_t i0, int64_t i1, int64_t K,
                  const T* packed, int64_t N, const T* bias, bool accumulate, T* out,
                  int64_t ldo);
};

// The kernel set for float32, from the CPU and FUSEDRNN_CPU_ISA (auto | avx512 | avx2 | base; read
// per call so tests can pin each path; naming one the CPU lacks is an error). float64 always runs
// the portable set (it is the accuracy reference, not a speed target).
const IsaKernels<float>& kernels_f32();
const IsaKernels<double>& kernels_f64();
// The instruction sets this CPU can run, best first (for tests and benchmarks).
const char* const* supported_isas(int* n);

// The Vec<float> that loops_impl.h needs, from x86 intrinsics of BITS-wide registers (256: AVX2,
// 512: AVX-512) and the accumulator budget of the micro-kernel. For the ISA files, inside their
// `#pragma GCC target` region.
#define FUSEDRNN_X86_VEC(BITS, ACC_REGS)                                             \
  template <typename T>                                                              \
  struct Vec;                                                                        \
  template <>                                                                        \
  struct Vec<float> {                                                                \
    static constexpr int W = BITS / 32, ACC = ACC_REGS;                              \
    using R = __m##BITS;                                                             \
    static R zero() { return _mm##BITS##_setzero_ps(); }                             \
    static R load(const float* p) { return _mm##BITS##_loadu_ps(p); }                \
    static void store(float* p, R v) { _mm##BITS##_storeu_ps(p, v); }                \
    static R bcast(float x) { return _mm##BITS##_set1_ps(x); }                       \
    static R fma(R a, R b, R c) { return _mm##BITS##_fmadd_ps(a, b, c); }            \
  };

// Defined by the per-ISA files; null where the set was not compiled (non-x86 builds).
const IsaKernels<float>* avx512_kernels();
const IsaKernels<float>* avx2_kernels();
const IsaKernels<float>* base_kernels_f32();
const IsaKernels<double>* base_kernels_f64();

}  // namespace cpu
}  // namespace fusedrnn
