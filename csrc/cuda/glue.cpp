// torch glue of the CUDA backend, compiled only when torch has CUDA (setup.py builds it into
// fusedrnn._C_cuda with the .cu files): defines fusedrnn::cuda_recurrence_fwd/_bwd and registers
// their CUDA kernels. The loops themselves are in loop.cpp; this file adds what needs CUDA torch:
// torch's current stream, on which at::addmm runs the per-step GEMMs too.
#include <Python.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "loop.h"

namespace fusedrnn {
namespace cuda {
namespace {

Tensors9 cuda_fwd(c10::string_view mode, const Tensor& xw, const Tensor& w_hh,
                  const OptTensor& b_hh, const Tensor& h0, const OptTensor& c0,
                  const OptTensor& lengths, bool reverse, const OptTensor& w_hr,
                  double grad_clip, const OptTensor& reset, const OptTensor& zoneout,
                  const OptTensorList& cell_params) {
  TORCH_CHECK(xw.is_cuda(), "fusedrnn (cuda): xw must be a CUDA tensor, got ", xw.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(xw.get_device()).stream();
  return recurrence_fwd(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, grad_clip, reset,
                        zoneout, cell_params, stream);
}

BwdResult cuda_bwd(c10::string_view mode, const OptTensor& dy, const OptTensor& dh_T,
                   const OptTensor& dc_T, const Tensor& w_hh, const OptTensor& b_hh,
                   const Tensor& h0, const OptTensor& c0, const OptTensor& lengths, bool reverse,
                   const OptTensor& w_hr, double grad_clip, const OptTensor& reset,
                   const OptTensor& zoneout, const Tensor& y, const Tensor& saved,
                   const Tensor& cs, const Tensor& hr, const Tensor& hs, const Tensor& cr,
                   const OptTensor& ln, const OptTensorList& cell_params) {
  TORCH_CHECK(y.is_cuda(), "fusedrnn (cuda): y must be a CUDA tensor, got ", y.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(y.get_device()).stream();
  return recurrence_bwd(mode, dy, dh_T, dc_T, w_hh, b_hh, h0, c0, lengths, reverse, w_hr,
                        grad_clip, reset, zoneout, y, saved, cs, hr, hs, cr, ln, cell_params,
                        stream);
}

}  // namespace
}  // namespace cuda
}  // namespace fusedrnn

// A fragment: fusedrnn._C (the CPU extension) owns TORCH_LIBRARY(fusedrnn).
TORCH_LIBRARY_FRAGMENT(fusedrnn, m) {
  m.def(FUSEDRNN_CUDA_FWD_SCHEMA);
  m.def(FUSEDRNN_CUDA_BWD_SCHEMA);
  m.def(FUSEDRNN_CUDA_POISON_SCHEMA, &fusedrnn::cuda::set_debug_poison);
}

TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  m.impl("cuda_recurrence_fwd", &fusedrnn::cuda::cuda_fwd);
  m.impl("cuda_recurrence_bwd", &fusedrnn::cuda::cuda_bwd);
}

// The Python module fusedrnn._C_cuda: importing it registers the ops above (a bare module, as in
// pytorch/extension-cpp: no pybind11 needed).
extern "C" PyObject* PyInit__C_cuda(void) {
  static PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C_cuda", "fusedrnn CUDA backend: registers fusedrnn::cuda_* ops",
      -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
