// The fused CPU loops (loops_impl.h) compiled for AVX2 + FMA: 8 float lanes, 16 vector registers,
// register blocks of up to 3 rows x 4 vectors. isa.cpp picks it on CPUs without AVX-512 (AMD Zen 3).
// Before every include, so that cells.h's functions get the same optimisation options as the loops
// that inline them (GCC does not inline across a mismatch): "no-trapping-math" lets GCC if-convert
// the selects of the cell math (clamps, relu); it changes no result.
#pragma GCC optimize("no-trapping-math")
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernel.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi2")
namespace fusedrnn::cpu::isa_avx2 {
FUSEDRNN_X86_VEC(256, 12)
#define FUSEDRNN_ISA_NAME "avx2"
#include "loops_impl.h"
}  // namespace fusedrnn::cpu::isa_avx2
#pragma GCC pop_options
const fusedrnn::cpu::IsaKernels<float>* fusedrnn::cpu::avx2_kernels() {
  return &isa_avx2::kKernels<float>;
}
#else
const fusedrnn::cpu::IsaKernels<float>* fusedrnn::cpu::avx2_kernels() { return nullptr; }
#endif
