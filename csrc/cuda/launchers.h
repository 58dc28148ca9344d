// Framework-free interface of the CUDA kernels: argument structs and launchers.
//
// Only the CUDA runtime types and cells.h are used here, so the torch glue (loop.cpp, compiled by
// the host compiler), the .cu files (nvcc) and the host emulation used by the CPU tests
// (tests/cuda_emu/) all include this one header. Every launcher runs ONE step of the recurrence
// on `stream` and returns the launch status; it never synchronizes.
//
// Storage vs compute dtype: `S` is the dtype of the big per-step tensors the caller owns (xw, y:
// float, double, __nv_bfloat16, __half); `A = acc_t<S>` is the dtype of the arithmetic and of
// everything the loop keeps (states, GEMM results, saved activations): double for double, float
// otherwise. The backward kernels run entirely in `A`.
//
// Layouts are row-major and contiguous. Gate g of unit j sits at column g*H + j (torch.nn order).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <type_traits>

#include "fusedrnn/cells.h"

namespace fusedrnn {
namespace cuda {

template <typename S>
using acc_t = typename std::conditional<std::is_same<S, double>::value, double, float>::type;

// Per-step state resets and zoneout (python/fusedrnn/ops/reference.py), shared by the step
// structs below. reset[t, b] != 0: a segment starts at step t of row b, so the state carried
// across that boundary restarts from zeros (the kernel that writes the state zeroes it for the
// next step; backward drops the gradient carried across it). zo: zoneout's keep-old mask m, the
// carried state becomes m * old + (1 - m) * new (h part first, Ho columns, then c, H columns).
template <typename A>
struct StateCarry {
  int64_t T = 0;                       // steps (reverse: a row's first step is run_length - 1)
  bool reverse = false;
  const A* reset = nullptr;            // [T, B] or nullptr
  const A* zo = nullptr;               // [T, B, Z] or nullptr
  int64_t Z = 0;                       // Ho (+ H with a cell state)
};

// One forward step t (a time index, not a loop counter: `reverse` is already folded into t).
// Row b is live when lengths == nullptr or t < lengths[b]; a dead row keeps its state, writes
// y = 0 and, for LSTM, cs[t] = c_prev so that backward reads a consistent c_prev.
template <typename S>
struct FwdStep {
  using A = acc_t<S>;
  int64_t B = 0, H = 0, Ho = 0;        // batch, hidden size, output width (P if projected)
  int64_t t = 0;                       // time index of this step
  bool proj = false;                   // the projection kernel commits h (y, h not written here)
  StateCarry<A> k;
  const int64_t* lengths = nullptr;    // [B] or nullptr
  const S* xw = nullptr;               // [T, B, G*H]
  const A* hh = nullptr;               // [B, G*H]  W_hh h_prev + b_hh of this step
  A* h = nullptr;                      // [B, H]    state, updated in place (not with projection)
  A* c = nullptr;                      // [B, H]    LSTM cell state, updated in place
  S* y = nullptr;                      // [T, B, Ho] (not written with projection)
  A* saved = nullptr;                  // [T, B, num_saved*H] or nullptr when the cell saves none
  A* cs = nullptr;                     // [T, B, H] LSTM cell state of every step
  A* hr = nullptr;                     // [T, B, H] the cell's own h (unprojected, before
                                       // zoneout) with a projection or zoneout, else nullptr
  A* cr = nullptr;                     // [T, B, H] the cell's own c (before zoneout), LSTM
                                       // with zoneout, else nullptr
  A* hs = nullptr;                     // [T, B, H] y in A when S is 16-bit (backward reads it)
  A* c_new = nullptr;                  // [B, H] norm_state cells only: the kernel leaves the
                                       // cell's new c here and commits nothing (h needs the
                                       // row's LN(c): NormStateFwdStep commits the step)
};

// After the projection GEMM hp = hr[t] @ W_hr^T: live rows take hp as state and output, dead
// rows keep their state and output 0.
template <typename S>
struct ProjFwdStep {
  using A = acc_t<S>;
  int64_t B = 0, P = 0, t = 0;
  StateCarry<A> k;                     // zoneout mixes the projected h with the carried one
  const int64_t* lengths = nullptr;    // [B] or nullptr
  const A* hp = nullptr;               // [B, P]
  A* h = nullptr;                      // [B, P] state
  S* y = nullptr;                      // [T, B, P]
  A* hs = nullptr;                     // [T, B, P] y in A when S is 16-bit, else nullptr
};

// One backward step t. The caller keeps dh (and dc) over reversed time; the kernel writes the
// gate gradients of step t and leaves in dh only the part of dL/dh_prev that does not go
// through W_hh (the caller then adds dgh[t] @ W_hh with one GEMM).
template <typename A>
struct BwdStep {
  int64_t B = 0, H = 0, Ho = 0, t = 0;
  StateCarry<A> k;
  A clip = A(0);                       // > 0: clamp dc_prev to [-clip, clip] (recurrent_grad_clip)
  const int64_t* lengths = nullptr;    // [B] or nullptr
  const A* dy = nullptr;               // [T, B, Ho] or nullptr (unused with projection)
  const A* dr = nullptr;               // [B, H] dL/d(unprojected h) of the step, projection only
  A* dh = nullptr;                     // [B, Ho] carried dL/dh (not written with projection)
  A* dc = nullptr;                     // [B, H]  carried dL/dc (LSTM)
  const A* saved = nullptr;            // [T, B, num_saved*H]
  const A* y = nullptr;                // [T, B, Ho] outputs = states of the live steps (in A)
  const A* h0 = nullptr;               // [B, Ho]
  const A* cs = nullptr;               // [T, B, H] (LSTM)
  const A* c0 = nullptr;               // [B, H] or nullptr (zeros)
  const A* hr = nullptr;               // [T, B, H] the cell's own h with zoneout (no
                                       // projection), else nullptr: y is the cell's h
  const A* cr = nullptr;               // [T, B, H] the cell's own c with zoneout, else nullptr
  A* dxw = nullptr;                    // [T, B, G*H] gradient of the input-side pre-activations
  A* dgh = nullptr;                    // [T, B, G*H] recurrent side (recurrent_grad_differs
                                       // cells); == dxw for the others
  A* dg_first = nullptr;               // [B, G*H] dgh of each row's first processed step
  const A* dc_ln = nullptr;            // [B, H] norm_state cells only: dL/dc through the
                                       // state LN of this step (NormStateBwdStep), added to
                                       // the cell's share of dc
};

// Row-wise normalisation (cells.h norm_recurrent / norm_state: the LayerNorm cells). These
// kernels run one block per batch row (a block reduction for the row's mean and variance,
// biased, kLnEps); the loop launches them where the cell's traits say so. What backward reads
// of the forward's normalisation is kept per (t, b) row in `ln` [T, B, ld]: with norm_recurrent
// the normalised recurrent product (G*H values) and its 1/std at columns [0, G*H]; with
// norm_state the normalised cell state (H values) and its 1/std at [off, off + H].

// Forward, norm_recurrent, after the GEMM hh = W_hh h_prev (no bias): row b of hh becomes
// LN(hh[b]) * gain + bias in place.
template <typename A>
struct NormRecFwdStep {
  int64_t B = 0, N = 0, t = 0;         // N = G*H
  A* hh = nullptr;                     // [B, N]
  const A* gain = nullptr;             // [N] cell_params[0]
  const A* bias = nullptr;             // [N] b_hh or nullptr
  A* ln = nullptr;                     // [T, B, ld]
  int64_t ld = 0;
};

// Backward, norm_recurrent, after the pointwise kernel: dgn[t, b] (the gradient w.r.t. hh, after
// the LN) goes through the LN backward into dgh[t, b] (w.r.t. W_hh h_prev; the GEMMs read it),
// and into dg_first[b] where the row's h_prev was h0.
template <typename A>
struct NormRecBwdStep {
  int64_t B = 0, N = 0, t = 0;
  StateCarry<A> k;
  const int64_t* lengths = nullptr;
  const A* gain = nullptr;             // [N]
  const A* ln = nullptr;               // [T, B, ld]
  int64_t ld = 0;
  const A* dgn = nullptr;              // [T, B, N]
  A* dgh = nullptr;                    // [T, B, N]
  A* dg_first = nullptr;               // [B, N]
};

// Forward, norm_state, after the pointwise kernel left the new c in a.c_new: row b's
// n = LN(c_new[b]) * gain + bias gives h = out(saved, n) per unit; then the step commits (state,
// y, cs, zoneout, resets) as the pointwise kernel does for the other cells.
template <typename S>
struct NormStateFwdStep {
  using A = acc_t<S>;
  FwdStep<S> a;
  const A* gain = nullptr;             // [H] cell_params[1]
  const A* bias = nullptr;             // [H] cell_params[2]
  A* ln = nullptr;                     // [T, B, ld]
  int64_t ld = 0, off = 0;
};

// Backward, norm_state, before the pointwise kernel: dn = out_bwd(dh, saved) per unit of row b
// (dh: the cell's share of dL/dh), then the LN backward into a.dc_ln; dn is kept in dn[t] for
// the gain and bias gradients, which the loop sums after the time loop.
template <typename A>
struct NormStateBwdStep {
  BwdStep<A> a;
  const A* gain = nullptr;             // [H]
  const A* ln = nullptr;               // [T, B, ld]
  int64_t ld = 0, off = 0;
  A* dc_ln = nullptr;                  // [B, H] (== a.dc_ln)
  A* dn = nullptr;                     // [T, B, H]
};

// Projection, backward, before the pointwise step: dhp[t] = dh + dy[t] on live rows (0 on dead
// rows), and the carry restarts at 0 on live rows (zoneout: dhp takes the (1 - m) share and the
// carry keeps the m share).
template <typename A>
struct ProjBwdStep {
  int64_t B = 0, P = 0, t = 0;
  StateCarry<A> k;
  const int64_t* lengths = nullptr;
  const A* dy = nullptr;               // [T, B, P] or nullptr
  A* dh = nullptr;                     // [B, P]
  A* dhp = nullptr;                    // [T, B, P]
};

// recurrent_grad_clip after the step's GEMM: clamp dh[b] to [-clip, clip] on live rows only
// (a dead row is not a step; its carry passes through untouched).
template <typename A>
struct ClampStep {
  int64_t B = 0, N = 0, t = 0;
  A clip = A(0);
  const int64_t* lengths = nullptr;
  A* dh = nullptr;                     // [B, N]
};

// The pointwise launchers of cell C (pointwise.cu instantiates them for every cell of
// FUSEDRNN_CELLS; S in float, double, __nv_bfloat16, __half; A in float, double).
template <Cell C, typename S>
cudaError_t fwd_pointwise(const FwdStep<S>& a, cudaStream_t stream);
template <Cell C, typename A>
cudaError_t bwd_pointwise(const BwdStep<A>& a, cudaStream_t stream);
// The norm_state row launchers of cell C; cudaErrorNotSupported for a cell without norm_state
// (no kernel is instantiated for those).
template <Cell C, typename S>
cudaError_t norm_state_fwd(const NormStateFwdStep<S>& a, cudaStream_t stream);
template <Cell C, typename A>
cudaError_t norm_state_bwd(const NormStateBwdStep<A>& a, cudaStream_t stream);

// Explicit instantiations of the two launchers for one cell and every dtype (pointwise.cu, and
// the host emulation of tests/cuda_emu), expanded with FUSEDRNN_CELLS.
#define FUSEDRNN_CELL_LAUNCHER_INSTANCES(CELL)                                                \
  template cudaError_t fwd_pointwise<Cell::CELL, float>(const FwdStep<float>&, cudaStream_t); \
  template cudaError_t fwd_pointwise<Cell::CELL, double>(const FwdStep<double>&,             \
                                                          cudaStream_t);                     \
  template cudaError_t fwd_pointwise<Cell::CELL, __nv_bfloat16>(                              \
      const FwdStep<__nv_bfloat16>&, cudaStream_t);                                           \
  template cudaError_t fwd_pointwise<Cell::CELL, __half>(const FwdStep<__half>&,             \
                                                          cudaStream_t);                     \
  template cudaError_t bwd_pointwise<Cell::CELL, float>(const BwdStep<float>&, cudaStream_t); \
  template cudaError_t bwd_pointwise<Cell::CELL, double>(const BwdStep<double>&, cudaStream_t); \
  template cudaError_t norm_state_fwd<Cell::CELL, float>(const NormStateFwdStep<float>&,     \
                                                         cudaStream_t);                     \
  template cudaError_t norm_state_fwd<Cell::CELL, double>(const NormStateFwdStep<double>&,   \
                                                          cudaStream_t);                    \
  template cudaError_t norm_state_fwd<Cell::CELL, __nv_bfloat16>(                             \
      const NormStateFwdStep<__nv_bfloat16>&, cudaStream_t);                                  \
  template cudaError_t norm_state_fwd<Cell::CELL, __half>(const NormStateFwdStep<__half>&,   \
                                                          cudaStream_t);                    \
  template cudaError_t norm_state_bwd<Cell::CELL, float>(const NormStateBwdStep<float>&,     \
                                                         cudaStream_t);                     \
  template cudaError_t norm_state_bwd<Cell::CELL, double>(const NormStateBwdStep<double>&,   \
                                                          cudaStream_t);

// Cell-independent launchers (common.cu).
template <typename S>
cudaError_t proj_fwd_commit(const ProjFwdStep<S>& a, cudaStream_t stream);
template <typename A>
cudaError_t proj_bwd_prepare(const ProjBwdStep<A>& a, cudaStream_t stream);
template <typename A>
cudaError_t clamp_live_rows(const ClampStep<A>& a, cudaStream_t stream);
template <typename A>
cudaError_t norm_rec_fwd(const NormRecFwdStep<A>& a, cudaStream_t stream);
template <typename A>
cudaError_t norm_rec_bwd(const NormRecBwdStep<A>& a, cudaStream_t stream);

// cudaGetErrorString, behind this interface so that the glue needs no CUDA runtime symbol of
// its own (the host emulation supplies its own definition).
const char* launch_error_string(cudaError_t err);

}  // namespace cuda
}  // namespace fusedrnn
