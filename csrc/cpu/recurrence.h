// The CPU backend of the recurrence op (one layer, one direction, one cell type).
//
// Op contract (DESIGN.md, python/fusedrnn/ops/reference.py):
//   xw [T, B, G*H], w_hh [G*H, H_out], b_hh [G*H]?, h0 [B, H_out], c0 [B, H]? (LSTM),
//   lengths [B] int64?, reverse, w_hr [P, H]? (LSTM projection, H_out = P)
// forward  -> y [T, B, H_out], h_T [B, H_out], c_T [B, H] (LSTM; [0] otherwise),
//             cs [T, B, H] (LSTM cell states of every step; [0] otherwise)
// Backward recomputes the gate activations from xw and one GEMM over all steps instead of
// saving them (docs/cpu_backend.md has the measured memory), so it takes xw, y and cs.
// backward -> d_xw, d_w_hh, d_b_hh ([0] without b_hh), dh0, dc0 ([0] without c0),
//             d_w_hr ([0] without w_hr)
// Absent optional results are empty tensors because custom-op schemas cannot return None; the
// Python wrapper (python/fusedrnn/ops/cpu.py) maps them back to None.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "fusedrnn/cells.h"

namespace fusedrnn {
namespace cpu {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

std::tuple<Tensor, Tensor, Tensor, Tensor> recurrence_fwd(
    c10::string_view mode, const Tensor& xw, const Tensor& w_hh, const OptTensor& b_hh,
    const Tensor& h0, const OptTensor& c0, const OptTensor& lengths, bool reverse,
    const OptTensor& w_hr);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> recurrence_bwd(
    c10::string_view mode, const OptTensor& dy, const OptTensor& dh_T, const OptTensor& dc_T,
    const Tensor& xw, const Tensor& w_hh, const OptTensor& b_hh, const Tensor& h0,
    const OptTensor& c0, const OptTensor& lengths, bool reverse, const OptTensor& w_hr,
    const Tensor& y, const Tensor& cs, double clip);

// One step of a cell with its input projection, for the streaming nn cells:
//   x [B, I], w_ih [G*H, I], b_ih [G*H]?, w_hh [G*H, H], b_hh [G*H]?, h [B, H], c [B, H]?
//   -> (h' [B, H], c' [B, H] (LSTM; [0] otherwise))
std::tuple<Tensor, Tensor> cell_step(c10::string_view mode, const Tensor& x, const Tensor& w_ih,
                                     const OptTensor& b_ih, const Tensor& w_hh,
                                     const OptTensor& b_hh, const Tensor& h, const OptTensor& c);

// ---- shared helpers (common.cpp) ----------------------------------------------------------------

Cell parse_mode(c10::string_view mode);

// Test hook: when on, every buffer and output the CPU ops allocate starts as NaN, so an element
// the loops forget to write shows up in the results.
void set_debug_poison(bool on);
bool debug_poison();
Tensor alloc(at::IntArrayRef sizes, const at::TensorOptions& opts);

// How the lengths are handled. kShrink: lengths sorted descending, so the live rows at step t
// are a prefix [0, active[t]) and padded rows cost nothing. kMask: unsorted, every row is
// computed and rows with t >= lengths[b] are masked.
enum class LenMode { kNone, kShrink, kMask };

struct Lengths {
  LenMode mode = LenMode::kNone;
  std::vector<int64_t> len;     // [B], clamped to [0, T]
  std::vector<int64_t> active;  // [T], live prefix per step (kNone/kShrink), B for kMask
  bool live(int64_t t, int64_t b) const { return mode == LenMode::kNone || t < len[b]; }
  int64_t length(int64_t b, int64_t T) const { return mode == LenMode::kNone ? T : len[b]; }
};

Lengths make_lengths(const OptTensor& lengths, int64_t T, int64_t B);

// Row-major C [M, N] = op(A) [M, K] @ op(B) [K, N] + beta * C (beta 0 or 1), op = transpose
// when ta/tb; lda/ldb/ldc are row strides of the stored matrices (blas.cpp).
template <typename T>
void gemm_rows(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
               const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// Which BLAS path the forward time loop's per-step GEMMs (StepGemm) take, from the environment
// variable FUSEDRNN_CPU_GEMM (read per op call): "auto" (default) packs the recurrent weights once
// per call with MKL's packed API when torch's BLAS exports it (float32 compute only), "plain"
// always calls gemm_rows, "packed" is auto that raises when the packed API is missing (tests).
enum class GemmPath { kAuto, kPlain, kPacked };
GemmPath gemm_path();

// C [M, N] = A [M, K] @ op(B) [K, N] + beta * C for many A and one B (a recurrent weight), M <=
// max_m. op(B) = B^T when tb; B [K, N] (or [N, K] when tb) with row stride ldb must outlive this
// object. Packed once here on the packed path (gemm_path()), else run() is gemm_rows (blas.cpp).
template <typename T>
class StepGemm {
 public:
  StepGemm(bool tb, int64_t max_m, int64_t N, int64_t K, const T* B, int64_t ldb);
  void run(int64_t M, const T* A, int64_t lda, T beta, T* C, int64_t ldc) const;

 private:
  bool tb_;
  int64_t N_, K_, ldb_;
  const T* B_;
  Tensor packed_;  // MKL's packed op(B) as bytes; undefined on the plain path
};

// While alive, the per-step GEMMs run on one BLAS thread if they are small (blas.cpp).
class SmallGemmGuard {
 public:
  explicit SmallGemmGuard(int64_t macs_per_step);
  ~SmallGemmGuard();
  SmallGemmGuard(const SmallGemmGuard&) = delete;
  SmallGemmGuard& operator=(const SmallGemmGuard&) = delete;

 private:
  int prev_ = 0;
  bool active_ = false;
};

// Rows per at::parallel_for chunk so that one chunk has enough work to pay for a thread.
int64_t row_grain(int64_t work_per_row);

}  // namespace cpu
}  // namespace fusedrnn
