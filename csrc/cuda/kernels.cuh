// The __global__ wrappers and their launch templates. Each kernel is one thread per element:
// it computes (b, j) from its block and thread index and calls the HOST_DEVICE body in
// pointwise.cuh. nvcc only.
#pragma once

#include "pointwise.cuh"

namespace fusedrnn {
namespace cuda {

// 32 consecutive units of one row per warp (coalesced [B, H] accesses), 8 rows per block, as
// Haste's pointwise kernels do.
constexpr int kBlockX = 32, kBlockY = 8;
// grid.y is limited to 65535 blocks
constexpr int64_t kMaxRows = int64_t(65535) * kBlockY;

inline dim3 grid_for(int64_t rows, int64_t cols) {
  return dim3(static_cast<unsigned>((cols + kBlockX - 1) / kBlockX),
              static_cast<unsigned>((rows + kBlockY - 1) / kBlockY));
}

// Thread coordinates shared by every wrapper: row b (batch), column j (unit).
#define FUSEDRNN_THREAD_ELEMENT(rows, cols)                               \
  const int64_t j = int64_t(blockIdx.x) * kBlockX + threadIdx.x;          \
  const int64_t b = int64_t(blockIdx.y) * kBlockY + threadIdx.y;          \
  if (b >= (rows) || j >= (cols)) return;

template <Cell C, typename S>
__global__ void __launch_bounds__(kBlockX * kBlockY) pointwise_fwd_kernel(const FwdStep<S> a) {
  FUSEDRNN_THREAD_ELEMENT(a.B, a.H)
  fwd_element<C, S>(a, b, j);
}

template <Cell C, typename A>
__global__ void __launch_bounds__(kBlockX * kBlockY) pointwise_bwd_kernel(const BwdStep<A> a) {
  FUSEDRNN_THREAD_ELEMENT(a.B, a.H)
  bwd_element<C, A>(a, b, j);
}

template <typename S>
__global__ void __launch_bounds__(kBlockX * kBlockY) proj_fwd_kernel(const ProjFwdStep<S> a) {
  FUSEDRNN_THREAD_ELEMENT(a.B, a.P)
  proj_fwd_element<S>(a, b, j);
}

template <typename A>
__global__ void __launch_bounds__(kBlockX * kBlockY) proj_bwd_kernel(const ProjBwdStep<A> a) {
  FUSEDRNN_THREAD_ELEMENT(a.B, a.P)
  proj_bwd_element<A>(a, b, j);
}

template <typename A>
__global__ void __launch_bounds__(kBlockX * kBlockY) clamp_kernel(const ClampStep<A> a) {
  FUSEDRNN_THREAD_ELEMENT(a.B, a.N)
  clamp_element<A>(a, b, j);
}

#undef FUSEDRNN_THREAD_ELEMENT

// The row kernels (normalisation, launchers.h NormRec* / NormState*): one block of kRowThreads
// threads per batch row b = blockIdx.x; the row bodies in pointwise.cuh take this block as `r`.
constexpr int kRowThreads = 128;  // a multiple of 32 (the reduction is per warp, then per block)
constexpr int kRowWarps = kRowThreads / 32;

// The sum of v over the block: a shuffle tree per warp, then every thread adds the warps'
// partial sums in the same fixed order (so every thread gets the same, deterministic total).
// A barrier: every thread of the block must call it.
template <typename A>
__device__ __forceinline__ A block_sum(A v) {
  __shared__ A part[kRowWarps];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  A total = part[0];
  for (int w = 1; w < kRowWarps; ++w) total += part[w];
  __syncthreads();  // part is reused by the next call
  return total;
}

struct DeviceRow {
  HOST_DEVICE int64_t first() const {
#ifdef __CUDA_ARCH__
    return threadIdx.x;
#else
    return 0;
#endif
  }
  HOST_DEVICE int64_t stride() const { return kRowThreads; }
  template <typename A>
  HOST_DEVICE A sum(A v) const {
#ifdef __CUDA_ARCH__
    return block_sum(v);
#else
    return v;  // device code only (kernels); the host emulation has its own block
#endif
  }
};

template <typename A>
__global__ void __launch_bounds__(kRowThreads) norm_rec_fwd_kernel(const NormRecFwdStep<A> a) {
  DeviceRow r;
  norm_rec_fwd_row<A>(a, blockIdx.x, r);
}

template <typename A>
__global__ void __launch_bounds__(kRowThreads) norm_rec_bwd_kernel(const NormRecBwdStep<A> a) {
  DeviceRow r;
  norm_rec_bwd_row<A>(a, blockIdx.x, r);
}

template <Cell C, typename S>
__global__ void __launch_bounds__(kRowThreads) norm_state_fwd_kernel(
    const NormStateFwdStep<S> a) {
  DeviceRow r;
  norm_state_fwd_row<C, S>(a, blockIdx.x, r);
}

template <Cell C, typename A>
__global__ void __launch_bounds__(kRowThreads) norm_state_bwd_kernel(
    const NormStateBwdStep<A> a) {
  DeviceRow r;
  norm_state_bwd_row<C, A>(a, blockIdx.x, r);
}

// Launch a row kernel over `rows` blocks; empty problems launch nothing.
template <typename Args>
cudaError_t launch_rows(void (*kernel)(const Args), const Args& a, int64_t rows, int64_t cols,
                        cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  if (rows > int64_t(0x7fffffff)) return cudaErrorInvalidConfiguration;
  kernel<<<dim3(static_cast<unsigned>(rows)), dim3(kRowThreads), 0, stream>>>(a);
  return cudaGetLastError();
}

// Launch `kernel` over a [rows, cols] grid; empty problems launch nothing.
template <typename Args>
cudaError_t launch_grid(void (*kernel)(const Args), const Args& a, int64_t rows, int64_t cols,
                        cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  if (rows > kMaxRows) return cudaErrorInvalidConfiguration;
  kernel<<<grid_for(rows, cols), dim3(kBlockX, kBlockY), 0, stream>>>(a);
  return cudaGetLastError();
}

// The pointwise launchers of launchers.h (instantiated in pointwise.cu).
template <Cell C, typename S>
cudaError_t fwd_pointwise(const FwdStep<S>& a, cudaStream_t stream) {
  return launch_grid(pointwise_fwd_kernel<C, S>, a, a.B, a.H, stream);
}
template <Cell C, typename A>
cudaError_t bwd_pointwise(const BwdStep<A>& a, cudaStream_t stream) {
  return launch_grid(pointwise_bwd_kernel<C, A>, a, a.B, a.H, stream);
}
// Only the norm_state cells get a kernel (the discarded branch instantiates none).
template <Cell C, typename S>
cudaError_t norm_state_fwd(const NormStateFwdStep<S>& a, cudaStream_t stream) {
  if constexpr (CellOps<C>::kNormState)
    return launch_rows(norm_state_fwd_kernel<C, S>, a, a.a.B, a.a.H, stream);
  else
    return cudaErrorNotSupported;
}
template <Cell C, typename A>
cudaError_t norm_state_bwd(const NormStateBwdStep<A>& a, cudaStream_t stream) {
  if constexpr (CellOps<C>::kNormState)
    return launch_rows(norm_state_bwd_kernel<C, A>, a, a.a.B, a.a.H, stream);
  else
    return cudaErrorNotSupported;
}

}  // namespace cuda
}  // namespace fusedrnn
