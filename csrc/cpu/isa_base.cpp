// The fused CPU loops (loops_impl.h) for any CPU: GCC vector extensions of the baseline
// instruction set (SSE2 on x86-64: 4 float / 2 double lanes), multiply then add (no FMA). The
// float fallback where neither AVX2 nor AVX-512 exists, and the float64 path everywhere.
// Before every include, so that cells.h's functions get the same optimisation options as the loops
// that inline them (GCC does not inline across a mismatch): "no-trapping-math" lets GCC if-convert
// the selects of the cell math (clamps, relu); it changes no result.
#pragma GCC optimize("no-trapping-math")
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernel.h"

namespace fusedrnn::cpu::isa_base {
template <typename T>
struct Vec {
  static constexpr int W = 16 / sizeof(T), ACC = 12;
  typedef T R __attribute__((vector_size(16)));
  static R zero() { return R{}; }
  static R load(const T* p) {
    R v;
    std::memcpy(&v, p, sizeof(R));
    return v;
  }
  static void store(T* p, R v) { std::memcpy(p, &v, sizeof(R)); }
  static R bcast(T x) { return R{} + x; }
  static R fma(R a, R b, R c) { return a * b + c; }
};
#define FUSEDRNN_ISA_NAME "base"
#include "loops_impl.h"
}  // namespace fusedrnn::cpu::isa_base

const fusedrnn::cpu::IsaKernels<float>* fusedrnn::cpu::base_kernels_f32() {
  return &isa_base::kKernels<float>;
}
const fusedrnn::cpu::IsaKernels<double>* fusedrnn::cpu::base_kernels_f64() {
  return &isa_base::kKernels<double>;
}
