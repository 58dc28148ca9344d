// Host emulation of the CUDA launchers (launchers.h), for the CPU tests only.
//
// Each launcher runs the same HOST_DEVICE element body as its __global__ wrapper in
// csrc/cuda/kernels.cuh, over the same (row, column) grid, sequentially on the host. Built with
// csrc/cuda/loop.cpp by tests/test_cuda_backend.py, so the time loop, the GEMM bookkeeping and
// every kernel's index math are checked against the reference without a GPU. What it cannot
// check: the 3-line __global__ wrappers, the launch configuration, device memory and streams.
#include "pointwise.cuh"

namespace fusedrnn {
namespace cuda {
namespace {

template <typename Args, typename Body>
cudaError_t emulate_grid(const Args& a, int64_t rows, int64_t cols, Body body) {
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t j = 0; j < cols; ++j) body(a, b, j);
  return cudaSuccess;
}

}  // namespace

template <Cell C, typename S>
cudaError_t fwd_pointwise(const FwdStep<S>& a, cudaStream_t) {
  return emulate_grid(a, a.B, a.H, fwd_element<C, S>);
}
template <Cell C, typename A>
cudaError_t bwd_pointwise(const BwdStep<A>& a, cudaStream_t) {
  return emulate_grid(a, a.B, a.H, bwd_element<C, A>);
}
FUSEDRNN_CELLS(FUSEDRNN_CELL_LAUNCHER_INSTANCES)

template <typename S>
cudaError_t proj_fwd_commit(const ProjFwdStep<S>& a, cudaStream_t) {
  return emulate_grid(a, a.B, a.P, proj_fwd_element<S>);
}
template <typename A>
cudaError_t proj_bwd_prepare(const ProjBwdStep<A>& a, cudaStream_t) {
  return emulate_grid(a, a.B, a.P, proj_bwd_element<A>);
}
template <typename A>
cudaError_t clamp_live_rows(const ClampStep<A>& a, cudaStream_t) {
  return emulate_grid(a, a.B, a.N, clamp_element<A>);
}

template cudaError_t proj_fwd_commit<float>(const ProjFwdStep<float>&, cudaStream_t);
template cudaError_t proj_fwd_commit<double>(const ProjFwdStep<double>&, cudaStream_t);
template cudaError_t proj_fwd_commit<__nv_bfloat16>(const ProjFwdStep<__nv_bfloat16>&,
                                                    cudaStream_t);
template cudaError_t proj_fwd_commit<__half>(const ProjFwdStep<__half>&, cudaStream_t);
template cudaError_t proj_bwd_prepare<float>(const ProjBwdStep<float>&, cudaStream_t);
template cudaError_t proj_bwd_prepare<double>(const ProjBwdStep<double>&, cudaStream_t);
template cudaError_t clamp_live_rows<float>(const ClampStep<float>&, cudaStream_t);
template cudaError_t clamp_live_rows<double>(const ClampStep<double>&, cudaStream_t);

const char* launch_error_string(cudaError_t) { return "host emulation error"; }

}  // namespace cuda
}  // namespace fusedrnn
