// Host emulation of the CUDA launchers (launchers.h), for the CPU tests only.
//
// Each launcher runs the same HOST_DEVICE element body as its __global__ wrapper in
// csrc/cuda/kernels.cuh, over the same (row, column) grid, sequentially on the host. Built with
// csrc/cuda/loop.cpp by tests/test_cuda_backend.py, so the time loop, the GEMM bookkeeping and
// every kernel's index math are checked against the reference without a GPU. What it cannot
// check: the 3-line __global__ wrappers, the launch configuration, device memory and streams.
//
// The row kernels (normalisation) run their row body on kHostRowThreads host threads per row,
// which meet at a barrier in every r.sum() as a block's threads do, so the bodies' strided
// column loops and reductions are exercised with more than one thread; the GPU's shuffle and
// shared-memory reduction itself (kernels.cuh block_sum) is not.
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

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

// A block of n host threads for one row: first()/stride()/sum() as kernels.cuh's DeviceRow.
constexpr int kHostRowThreads = 3;  // odd on purpose: no row length here is a multiple of it

struct HostBlock {
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  int64_t generation = 0;
  double part[kHostRowThreads] = {};

  void barrier() {
    std::unique_lock<std::mutex> lock(mu);
    const int64_t gen = generation;
    if (++arrived == kHostRowThreads) {
      arrived = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return generation != gen; });
    }
  }
};

struct HostRow {
  HostBlock* block;
  int tid;
  int64_t first() const { return tid; }
  int64_t stride() const { return kHostRowThreads; }
  template <typename A>
  A sum(A v) {
    block->part[tid] = double(v);  // exact for float and double
    block->barrier();
    A total = A(block->part[0]);   // every thread adds in the same order, as on the GPU
    for (int w = 1; w < kHostRowThreads; ++w) total += A(block->part[w]);
    block->barrier();              // part is reused by the next call
    return total;
  }
};

template <typename Args, typename Body>
cudaError_t emulate_rows(const Args& a, int64_t rows, int64_t cols, Body body) {
  if (cols == 0) return cudaSuccess;
  for (int64_t b = 0; b < rows; ++b) {
    HostBlock block;
    std::vector<std::thread> threads;
    for (int tid = 0; tid < kHostRowThreads; ++tid)
      threads.emplace_back([&, tid] {
        HostRow r{&block, tid};
        body(a, b, r);
      });
    for (auto& th : threads) th.join();
  }
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
template <Cell C, typename S>
cudaError_t norm_state_fwd(const NormStateFwdStep<S>& a, cudaStream_t) {
  if constexpr (CellOps<C>::kNormState)
    return emulate_rows(a, a.a.B, a.a.H, norm_state_fwd_row<C, S, HostRow>);
  else
    return cudaErrorNotSupported;
}
template <Cell C, typename A>
cudaError_t norm_state_bwd(const NormStateBwdStep<A>& a, cudaStream_t) {
  if constexpr (CellOps<C>::kNormState)
    return emulate_rows(a, a.a.B, a.a.H, norm_state_bwd_row<C, A, HostRow>);
  else
    return cudaErrorNotSupported;
}
FUSEDRNN_CELLS(FUSEDRNN_CELL_LAUNCHER_INSTANCES)

template <typename A>
cudaError_t norm_rec_fwd(const NormRecFwdStep<A>& a, cudaStream_t) {
  return emulate_rows(a, a.B, a.N, norm_rec_fwd_row<A, HostRow>);
}
template <typename A>
cudaError_t norm_rec_bwd(const NormRecBwdStep<A>& a, cudaStream_t) {
  return emulate_rows(a, a.B, a.N, norm_rec_bwd_row<A, HostRow>);
}
template cudaError_t norm_rec_fwd<float>(const NormRecFwdStep<float>&, cudaStream_t);
template cudaError_t norm_rec_fwd<double>(const NormRecFwdStep<double>&, cudaStream_t);
template cudaError_t norm_rec_bwd<float>(const NormRecBwdStep<float>&, cudaStream_t);
template cudaError_t norm_rec_bwd<double>(const NormRecBwdStep<double>&, cudaStream_t);

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
