// The CPU backend of the recurrence op (one layer, one direction, one cell type).
//
// Op contract (docs/architecture.md, python/fusedrnn/ops/reference.py):
//   xw [T, B, G*H], w_hh [G*H, H_out], b_hh [G*H]?, h0 [B, H_out], c0 [B, H]? (LSTM),
//   lengths [B] int64?, reverse, w_hr [P, H]? (LSTM projection, H_out = P)
//   save: keep what backward needs (false for inference: nothing is written to ws)
// forward  -> y [T, B, H_out], h_T [B, H_out], c_T [B, H] (LSTM; [0] otherwise),
//             ws [T, B, width] (ws_layout below; [0] when empty)
// Backward recomputes what ws does not hold (the gate pre-activations and activations) from xw
// and y, tile by tile with the forward's own micro-kernel, so it takes xw, y and ws.
// backward -> d_xw, d_w_hh, d_b_hh ([0] without b_hh), dh0, dc0 ([0] without c0),
//             d_w_hr ([0] without w_hr), d_cell_params (one per cell_params, [] without)
// Absent optional results are empty tensors because custom-op schemas cannot return None; the
// Python wrapper (python/fusedrnn/ops/cpu.py) maps them back to None.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "fusedrnn/cells.h"

namespace fusedrnn {
namespace cpu {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using OptTensorList = std::optional<at::TensorList>;

std::tuple<Tensor, Tensor, Tensor, Tensor> recurrence_fwd(
    c10::string_view mode, const Tensor& xw, const Tensor& w_hh, const OptTensor& b_hh,
    const Tensor& h0, const OptTensor& c0, const OptTensor& lengths, bool reverse,
    const OptTensor& w_hr, bool save, const OptTensor& reset, const OptTensor& zoneout,
    const OptTensorList& cell_params);

// cell_params: the extra per-layer parameters of the row-normalised cells (cells.h), in order;
// backward returns their gradients last (an empty list for the other cells).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> recurrence_bwd(
    c10::string_view mode, const OptTensor& dy, const OptTensor& dh_T, const OptTensor& dc_T,
    const Tensor& xw, const Tensor& w_hh, const OptTensor& b_hh, const Tensor& h0,
    const OptTensor& c0, const OptTensor& lengths, bool reverse, const OptTensor& w_hr,
    const Tensor& y, const Tensor& ws, double clip, const OptTensor& reset,
    const OptTensor& zoneout, const OptTensorList& cell_params);

// The forward's workspace ws [T, B, width] for backward, per row and step: the cell state (cells
// that have one) at cs_off, then the activations at act_off (cells that save them, without a
// projection). Offsets are -1 where absent; width 0 (ws = [0]) when nothing is saved (save=false:
// inference, or a cell with neither). With zoneout no activations are saved (the cell state
// saved is the mixed one; backward recomputes the cell's own outputs).
struct WsLayout {
  int64_t cs_off = -1, act_off = -1, width = 0;
};
WsLayout ws_layout(Cell cell, int64_t H, bool save, bool proj, bool zoneout = false);

// reset [T, B] and zoneout [T, B, Z] (Z = H_out, + H for cell-state cells) of the op, checked,
// as contiguous `acc` tensors (undefined when absent).
struct CarryArgs {
  Tensor reset, zoneout;
};
CarryArgs carry_args(Cell cell, const OptTensor& reset, const OptTensor& zoneout, int64_t T,
                     int64_t B, int64_t H, int64_t Ho, at::ScalarType acc);

// One step of a cell with its input projection, for the streaming nn cells:
//   x [B, I], w_ih [G*H, I], b_ih [G*H]?, w_hh [G*H, H], b_hh [G*H]?, h [B, H], c [B, H]?
//   -> (h' [B, H], c' [B, H] (LSTM; [0] otherwise))
std::tuple<Tensor, Tensor> cell_step(c10::string_view mode, const Tensor& x, const Tensor& w_ih,
                                     const OptTensor& b_ih, const Tensor& w_hh,
                                     const OptTensor& b_hh, const Tensor& h, const OptTensor& c);

// ---- shared helpers (common.cpp) ----------------------------------------------------------------

Cell parse_mode(c10::string_view mode);

// cell_params (cells.h num_cell_params, cell_param_units) checked against the cell (count,
// shapes, dtype of xw, CPU) and prepared in `acc`.
std::vector<Tensor> cell_params_of(Cell cell, const OptTensorList& cell_params, const Tensor& xw,
                                   int64_t H, at::ScalarType acc);

// Test hook: when on, every buffer and output the CPU ops allocate starts as NaN, so an element
// the loops forget to write shows up in the results.
void set_debug_poison(bool on);
bool debug_poison();
Tensor alloc(at::IntArrayRef sizes, const at::TensorOptions& opts);

// pool.cpp: an empty CPU tensor whose storage (when >= 1 MiB) comes from a cache of large
// blocks that outlives the tensor, so repeated calls reuse warm pages. `alloc` uses it.
Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opts);
struct PoolStats {
  int64_t cached_bytes, cached_blocks, limit_bytes, hits, misses;
};
PoolStats pool_stats();
void pool_empty();                   // free every cached block
void pool_set_limit(int64_t bytes);  // 0: cache nothing

// Lengths of the rows, clamped to [0, T] (T for every row when none were given).
struct Lengths {
  bool given = false;
  std::vector<int64_t> len;  // [B]
};

Lengths make_lengths(const OptTensor& lengths, int64_t T, int64_t B);

// The rows of the batch split into groups, one per thread for the whole sequence: balanced by
// work (the sum of their lengths), each group sorted by length, longest first (kernel.h RowSet).
struct RowPartition {
  std::vector<int64_t> rows;     // all rows, group after group
  std::vector<int64_t> offsets;  // [groups + 1]
  int64_t groups() const { return int64_t(offsets.size()) - 1; }
};

// macs_per_row_step: the work of one row and step; small calls run on one thread.
RowPartition partition_rows(const Lengths& L, int64_t macs_per_row_step);

// Runs fn(group) for every group of `part`, one thread each.
template <typename F>
void run_groups(const RowPartition& part, const F& fn) {
  if (part.groups() == 1) return fn(0);
  at::parallel_for(0, part.groups(), 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) fn(g);
  });
}

// out [M, N] (+)= a [M, K] @ w [N, K]^T (+ bias [N]), a and w row- or column-major, out
// row-major float32/float64: every row reduced in a fixed order (linear.cpp, gemm_impl.h).
void matmul_rows(const Tensor& a, const Tensor& w, const Tensor& bias, bool accumulate,
                 Tensor& out);
Tensor rows_linear(const Tensor& a, const Tensor& w, const OptTensor& b);

// Row-major C [M, N] = op(A) [M, K] @ op(B) [K, N] + beta * C (beta 0 or 1), op = transpose
// when ta/tb; lda/ldb/ldc are row strides of the stored matrices (blas.cpp).
template <typename T>
void gemm_rows(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
               const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace cpu
}  // namespace fusedrnn
