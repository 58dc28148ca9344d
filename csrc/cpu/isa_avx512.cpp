// The fused CPU loops (loops_impl.h) compiled for AVX-512: 16 float lanes, 32 vector registers,
// register blocks of up to 6 rows x 4 vectors. isa.cpp picks it on CPUs with AVX-512F/BW/VL/DQ.
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
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2,prefer-vector-width=512")
namespace fusedrnn::cpu::isa_avx512 {
FUSEDRNN_X86_VEC(512, 24)
#define FUSEDRNN_ISA_NAME "avx512"
#include "loops_impl.h"
}  // namespace fusedrnn::cpu::isa_avx512
#pragma GCC pop_options
const fusedrnn::cpu::IsaKernels<float>* fusedrnn::cpu::avx512_kernels() {
  return &isa_avx512::kKernels<float>;
}
#else
const fusedrnn::cpu::IsaKernels<float>* fusedrnn::cpu::avx512_kernels() { return nullptr; }
#endif
