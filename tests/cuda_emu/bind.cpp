// Registers the CUDA backend's loops, running on the host emulation of the launchers, as CPU ops
// fusedrnn_emu::cuda_recurrence_fwd/_bwd (same schemas as glue.cpp). Test-only.
#include <torch/library.h>

#include "loop.h"

namespace {

using fusedrnn::cuda::OptTensor;
using fusedrnn::cuda::OptTensorList;
using fusedrnn::cuda::BwdResult;
using fusedrnn::cuda::Tensors9;
using at::Tensor;

Tensors9 emu_fwd(c10::string_view mode, const Tensor& xw, const Tensor& w_hh,
                 const OptTensor& b_hh, const Tensor& h0, const OptTensor& c0,
                 const OptTensor& lengths, bool reverse, const OptTensor& w_hr,
                 double grad_clip, const OptTensor& reset, const OptTensor& zoneout,
                 const OptTensorList& cell_params) {
  return fusedrnn::cuda::recurrence_fwd(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr,
                                        grad_clip, reset, zoneout, cell_params, nullptr);
}

BwdResult emu_bwd(c10::string_view mode, const OptTensor& dy, const OptTensor& dh_T,
                  const OptTensor& dc_T, const Tensor& w_hh, const OptTensor& b_hh,
                  const Tensor& h0, const OptTensor& c0, const OptTensor& lengths, bool reverse,
                  const OptTensor& w_hr, double grad_clip, const OptTensor& reset,
                  const OptTensor& zoneout, const Tensor& y, const Tensor& saved,
                  const Tensor& cs, const Tensor& hr, const Tensor& hs, const Tensor& cr,
                  const OptTensor& ln, const OptTensorList& cell_params) {
  return fusedrnn::cuda::recurrence_bwd(mode, dy, dh_T, dc_T, w_hh, b_hh, h0, c0, lengths,
                                        reverse, w_hr, grad_clip, reset, zoneout, y, saved, cs,
                                        hr, hs, cr, ln, cell_params, nullptr);
}

}  // namespace

TORCH_LIBRARY(fusedrnn_emu, m) {
  m.def(FUSEDRNN_CUDA_FWD_SCHEMA);
  m.def(FUSEDRNN_CUDA_BWD_SCHEMA);
  m.def(FUSEDRNN_CUDA_POISON_SCHEMA, &fusedrnn::cuda::set_debug_poison);
}

TORCH_LIBRARY_IMPL(fusedrnn_emu, CPU, m) {
  m.impl("cuda_recurrence_fwd", &emu_fwd);
  m.impl("cuda_recurrence_bwd", &emu_bwd);
}
