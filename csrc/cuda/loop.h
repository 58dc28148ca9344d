// The time loops of the CUDA backend, written against ATen and the framework-free launchers.
//
// This file and loop.cpp use no CUDA-specific torch header: the GEMMs are at::addmm/at::mm on
// whatever device the tensors live on (on CUDA they run on torch's current stream, which the
// caller passes here as `stream` for the launchers). glue.cpp calls them for CUDA tensors; the
// CPU tests call them for CPU tensors with a host emulation of the launchers
// (tests/cuda_emu/), which exercises this loop and the kernels' index math without a GPU.
//
// Op schemas (registered by glue.cpp as fusedrnn::cuda_recurrence_fwd/_bwd, and by the host
// emulation under its own namespace). Absent optional results are empty tensors.
//   fwd -> y [T, B, H_out], h_T [B, H_out], c_T [B, H] (LSTM), saved [T, B, S*H] (float32 or
//          float64), cs [T, B, H] (LSTM cell states), hr [T, B, H] (the cell's own h:
//          unprojected, before zoneout; with a projection or zoneout), hs [T, B, H_out] (y in
//          float32 for bfloat16/float16 storage: backward's derivatives use the states
//          unrounded, e.g. RNN_TANH's 1 - h^2 near |h| = 1), cr [T, B, H] (the LSTM cell's own
//          c before zoneout, with zoneout), ln [T, B, ld] (the row-normalised cells: what
//          backward reads of the forward's LayerNorms, launchers.h; empty for the others)
//   bwd -> d_xw [T, B, G*H], d_w_hh [G*H, H_out], d_b_hh [G*H], dh0 [B, H_out], dc0 [B, H],
//          d_w_hr [P, H], d_cell_params (one per cell_params, [] without)
// cell_params: the extra per-layer parameters of the row-normalised cells (cells.h
// norm_recurrent / norm_state, python/fusedrnn/ops/cells.py CELLS[mode].cell_params), in order;
// None or empty for the other cells. Their kernels are the row kernels of launchers.h.
// grad_clip > 0 is recurrent_grad_clip (see python/fusedrnn/ops/reference.py); 0 means none.
// reset [T, B] and zoneout [T, B, Z] (xw's dtype) are the op's per-step state resets and
// zoneout keep-old mask (the reference's module doc); both fused in forward and backward.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include <optional>
#include <tuple>
#include <vector>

#define FUSEDRNN_CUDA_FWD_SCHEMA                                                          \
  "cuda_recurrence_fwd(str mode, Tensor xw, Tensor w_hh, Tensor? b_hh, Tensor h0, "       \
  "Tensor? c0, Tensor? lengths, bool reverse, Tensor? w_hr, float grad_clip, "             \
  "Tensor? reset, Tensor? zoneout, Tensor[]? cell_params=None) -> "                         \
  "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
#define FUSEDRNN_CUDA_BWD_SCHEMA                                                          \
  "cuda_recurrence_bwd(str mode, Tensor? dy, Tensor? dh_T, Tensor? dc_T, Tensor w_hh, "    \
  "Tensor? b_hh, Tensor h0, Tensor? c0, Tensor? lengths, bool reverse, Tensor? w_hr, "     \
  "float grad_clip, Tensor? reset, Tensor? zoneout, Tensor y, Tensor saved, Tensor cs, "   \
  "Tensor hr, Tensor hs, Tensor cr, Tensor? ln=None, Tensor[]? cell_params=None) -> "      \
  "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor[])"
#define FUSEDRNN_CUDA_POISON_SCHEMA "cuda_set_debug_poison(bool on) -> ()"

namespace fusedrnn {
namespace cuda {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using OptTensorList = std::optional<at::TensorList>;
using BwdResult =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>>;
using Tensors9 =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

Tensors9 recurrence_fwd(c10::string_view mode, const Tensor& xw, const Tensor& w_hh,
                        const OptTensor& b_hh, const Tensor& h0, const OptTensor& c0,
                        const OptTensor& lengths, bool reverse, const OptTensor& w_hr,
                        double grad_clip, const OptTensor& reset, const OptTensor& zoneout,
                        const OptTensorList& cell_params, cudaStream_t stream);

BwdResult recurrence_bwd(c10::string_view mode, const OptTensor& dy, const OptTensor& dh_T,
                         const OptTensor& dc_T, const Tensor& w_hh, const OptTensor& b_hh,
                         const Tensor& h0, const OptTensor& c0, const OptTensor& lengths,
                         bool reverse, const OptTensor& w_hr, double grad_clip,
                         const OptTensor& reset, const OptTensor& zoneout, const Tensor& y,
                         const Tensor& saved, const Tensor& cs, const Tensor& hr,
                         const Tensor& hs, const Tensor& cr, const OptTensor& ln,
                         const OptTensorList& cell_params, cudaStream_t stream);

// Test hook (registered as cuda_set_debug_poison): while on, every buffer and output the loops
// allocate starts as NaN.
void set_debug_poison(bool on);

}  // namespace cuda
}  // namespace fusedrnn
