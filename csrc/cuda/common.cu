// Cell-independent kernels of the loop (projection commit and gradient prepare, the
// recurrent-gradient clamp, the recurrent product's row normalisation) and the error-string
// hook. No cell math here either.
#include "fusedrnn/cells.h"
#include "kernels.cuh"

namespace fusedrnn {
namespace cuda {

template <typename S>
cudaError_t proj_fwd_commit(const ProjFwdStep<S>& a, cudaStream_t stream) {
  return launch_grid(proj_fwd_kernel<S>, a, a.B, a.P, stream);
}

template <typename A>
cudaError_t proj_bwd_prepare(const ProjBwdStep<A>& a, cudaStream_t stream) {
  return launch_grid(proj_bwd_kernel<A>, a, a.B, a.P, stream);
}

template <typename A>
cudaError_t clamp_live_rows(const ClampStep<A>& a, cudaStream_t stream) {
  return launch_grid(clamp_kernel<A>, a, a.B, a.N, stream);
}

template <typename A>
cudaError_t norm_rec_fwd(const NormRecFwdStep<A>& a, cudaStream_t stream) {
  return launch_rows(norm_rec_fwd_kernel<A>, a, a.B, a.N, stream);
}

template <typename A>
cudaError_t norm_rec_bwd(const NormRecBwdStep<A>& a, cudaStream_t stream) {
  return launch_rows(norm_rec_bwd_kernel<A>, a, a.B, a.N, stream);
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
template cudaError_t norm_rec_fwd<float>(const NormRecFwdStep<float>&, cudaStream_t);
template cudaError_t norm_rec_fwd<double>(const NormRecFwdStep<double>&, cudaStream_t);
template cudaError_t norm_rec_bwd<float>(const NormRecBwdStep<float>&, cudaStream_t);
template cudaError_t norm_rec_bwd<double>(const NormRecBwdStep<double>&, cudaStream_t);

const char* launch_error_string(cudaError_t err) { return cudaGetErrorString(err); }

}  // namespace cuda
}  // namespace fusedrnn
