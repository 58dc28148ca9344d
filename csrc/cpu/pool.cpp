// A cache of the large blocks the CPU ops allocate (their outputs and workspaces: `alloc` in
// common.cpp), so that a training loop does not get fresh pages from the kernel on every call.
//
// Why: glibc returns a freed block of more than a few MiB to the kernel (munmap, or a trim of
// the heap), so every call's [T, B, G*H] projection, outputs and saved activations are fresh
// pages, and the first touch of each page is a fault plus zeroing. On a virtual machine that is
// expensive: on the AMD EPYC Zen 5 (KVM) of session 6, zero-filling a fresh 16 MiB buffer took
// 4-6 ms against ~0.2 ms on warm pages, and the ops ran 1.5-3x slower inside a training loop than
// alone. PyTorch's CPU allocator has no cache (its CUDA one does); this one is the same idea for
// our own buffers only: blocks >= 1 MiB, sizes rounded up to 2 MiB, best fit within +25 %,
// at most FUSEDRNN_CPU_POOL_MB MiB (default 512; 0 turns the cache off) kept while unused.
//
// The profiler still sees every allocation and free (reportMemoryUsageToProfiler, as c10's CPU
// allocator does), so peak-memory measurements count our live buffers as before; blocks held
// in the cache while unused are not counted (as with torch.cuda's caching allocator).
// `fusedrnn._C._cpu_pool_stats()` / `_cpu_pool_empty()` show and release it.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#ifdef __linux__
#include <pthread.h>
#include <sys/mman.h>
#endif

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include "recurrence.h"

namespace fusedrnn {
namespace cpu {

namespace {

constexpr size_t kMinPooled = size_t(1) << 20;  // smaller blocks: c10's CPU allocator
constexpr size_t kRound = size_t(2) << 20;       // 2 MiB: a transparent huge page

size_t limit_from_env() {
  const char* v = std::getenv("FUSEDRNN_CPU_POOL_MB");
  if (v == nullptr || *v == '\0') return size_t(512) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(v, &end, 10);
  TORCH_CHECK(end != v && *end == '\0' && mb >= 0,
              "FUSEDRNN_CPU_POOL_MB must be a whole number of MiB >= 0, got '", v, "'");
  return size_t(mb) << 20;
}

struct Block {
  void* p;
  size_t size;  // rounded
};

class Pool {
 public:
  Pool() : limit_(limit_from_env()) {
#ifdef __linux__
    // a fork while another thread holds the lock must not leave the child's pool locked
    pthread_atfork([] { instance().mu_.lock(); }, [] { instance().mu_.unlock(); },
                   [] { instance().mu_.unlock(); });
#endif
  }

  static Pool& instance() {
    static Pool* pool = new Pool();  // never destroyed: tensors may be freed at exit
    return *pool;
  }

  // A block of at least `size` (rounded) bytes: a cached one when one fits, else a new one.
  void* get(size_t size) {
    {
      std::lock_guard<std::mutex> g(mu_);
      auto it = free_.lower_bound(size);
      if (it != free_.end() && it->first <= size + size / 4) {
        void* p = it->second;
        cached_ -= it->first;
        free_.erase(it);
        ++hits_;
        return p;
      }
      ++misses_;
    }
    void* p = nullptr;
    if (posix_memalign(&p, kRound, size) != 0 || p == nullptr)
      TORCH_CHECK(false, "fusedrnn: out of memory allocating ", size, " bytes");
#ifdef __linux__
    // transparent huge pages: a fault per 2 MiB instead of per 4 KiB on first touch (advisory)
    madvise(p, size, MADV_HUGEPAGE);
#endif
    return p;
  }

  // Keeps the block for a later `get`, evicting the largest cached ones past the limit.
  void put(void* p, size_t size) {
    std::lock_guard<std::mutex> g(mu_);
    free_.emplace(size, p);
    cached_ += size;
    evict_locked();
  }

  void empty() { set_limit(0, /*keep_limit=*/true); }

  void set_limit(size_t bytes, bool keep_limit = false) {
    std::lock_guard<std::mutex> g(mu_);
    const size_t old = limit_;
    limit_ = bytes;
    evict_locked();
    if (keep_limit) limit_ = old;
  }

  PoolStats stats() {
    std::lock_guard<std::mutex> g(mu_);
    return {int64_t(cached_), int64_t(free_.size()), int64_t(limit_), hits_, misses_};
  }

 private:
  void evict_locked() {  // free() under the lock: rare (past the limit), and keeps this simple
    while (cached_ > limit_ && !free_.empty()) {
      auto last = std::prev(free_.end());
      cached_ -= last->first;
      std::free(last->second);
      free_.erase(last);
    }
  }

  std::mutex mu_;
  std::multimap<size_t, void*> free_;  // size -> block, unused
  size_t cached_ = 0;
  size_t limit_;
  int64_t hits_ = 0, misses_ = 0;
};

std::atomic<int64_t> g_live{0};  // bytes handed out and not yet freed (for the profiler)

void release(void* ctx) {
  auto* b = static_cast<Block*>(ctx);
  const int64_t live = g_live.fetch_sub(int64_t(b->size)) - int64_t(b->size);
  c10::reportMemoryUsageToProfiler(b->p, -int64_t(b->size), size_t(live), size_t(live),
                                   c10::Device(c10::DeviceType::CPU));
  Pool::instance().put(b->p, b->size);
  delete b;
}

struct PoolAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    if (n < kMinPooled) return c10::GetDefaultCPUAllocator()->allocate(n);
    const size_t size = (n + kRound - 1) / kRound * kRound;
    void* p = Pool::instance().get(size);
    const int64_t live = g_live.fetch_add(int64_t(size)) + int64_t(size);
    c10::reportMemoryUsageToProfiler(p, int64_t(size), size_t(live), size_t(live),
                                     c10::Device(c10::DeviceType::CPU));
    return {p, new Block{p, size}, &release, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

PoolAllocator g_allocator;

}  // namespace

Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  TORCH_CHECK(opts.device().is_cpu(), "fusedrnn: pooled_empty is for CPU tensors");
  return at::detail::empty_generic(sizes, &g_allocator,
                                   c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(opts.dtype()), std::nullopt);
}

PoolStats pool_stats() { return Pool::instance().stats(); }
void pool_empty() { Pool::instance().empty(); }
void pool_set_limit(int64_t bytes) {
  Pool::instance().set_limit(size_t(std::max<int64_t>(0, bytes)));
}

}  // namespace cpu
}  // namespace fusedrnn
