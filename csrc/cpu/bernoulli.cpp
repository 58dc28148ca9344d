// fusedrnn::keep_mask: zoneout's keep-old masks on CPU, drawn by a counter-based generator.
//
// mask[..., z] = 1 where u(seed, i) < p[z], else 0, for the flat index i of every element and
// u uniform on [0, 1) with 24 bits: splitmix64 of (seed, i). Every element is a pure function
// of (seed, i), so the mask is the same with any thread count, and the draw runs on every thread;
// torch.rand + lt_ (one thread, a Mersenne twister) took ~5 ms of a ~30 ms zoneout training step
// for its [1, 256, 32, 256] mask (Zen 5). The seed is a tensor drawn from torch's generator by
// the caller (nn/rnn.py zoneout_mask), so training stays reproducible under torch.manual_seed.
#include <torch/library.h>

#include "recurrence.h"

namespace fusedrnn {
namespace cpu {

namespace {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

template <typename T>
void fill(T* out, const T* p, int64_t n, int64_t Z, uint64_t seed) {
  // one element per hash; 24 bits of it, as a float in [0, 1) holds them exactly
  const uint64_t key = splitmix64(seed);
  at::parallel_for(0, n, int64_t(1) << 16, [&](int64_t i0, int64_t i1) {
    int64_t z = i0 % Z;
    for (int64_t i = i0; i < i1; ++i) {
      const float u = float(splitmix64(key ^ uint64_t(i)) >> 40) * (1.0f / 16777216.0f);
      out[i] = u < float(p[z]) ? T(1) : T(0);
      if (++z == Z) z = 0;
    }
  });
}

}  // namespace

Tensor keep_mask(at::IntArrayRef shape, const Tensor& p, const Tensor& seed) {
  TORCH_CHECK(!shape.empty() && shape.back() == p.numel() && p.dim() == 1,
              "fusedrnn::keep_mask: p must be 1-D with the last size of shape (", shape,
              "), got ", p.sizes());
  TORCH_CHECK(p.is_cpu() && (p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble),
              "fusedrnn::keep_mask: p must be a float32 or float64 CPU tensor, got ",
              p.scalar_type(), " on ", p.device());
  TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong && seed.is_cpu(),
              "fusedrnn::keep_mask: seed must be one int64 on the CPU, got ", seed.sizes(), " ",
              seed.scalar_type());
  Tensor out = alloc(shape, p.options());
  const Tensor pc = p.contiguous();
  const uint64_t s = uint64_t(seed.item<int64_t>());
  const int64_t Z = p.numel();
  if (out.numel() == 0) return out;
  if (p.scalar_type() == at::kDouble)
    fill(out.data_ptr<double>(), pc.data_ptr<double>(), out.numel(), Z, s);
  else
    fill(out.data_ptr<float>(), pc.data_ptr<float>(), out.numel(), Z, s);
  return out;
}

TORCH_LIBRARY_FRAGMENT(fusedrnn, m) {
  m.def("keep_mask(int[] shape, Tensor p, Tensor seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) { m.impl("keep_mask", &keep_mask); }

}  // namespace cpu
}  // namespace fusedrnn
