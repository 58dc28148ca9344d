// Run-time choice of the instruction set for the fused CPU loops (kernel.h).
#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "kernel.h"

namespace fusedrnn {
namespace cpu {

namespace {

bool cpu_has(const char* isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (std::strcmp(isa, "avx512") == 0)
    return avx512_kernels() != nullptr && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq");
  if (std::strcmp(isa, "avx2") == 0)
    return avx2_kernels() != nullptr && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
#endif
  return std::strcmp(isa, "base") == 0;
}

}  // namespace

const char* const* supported_isas(int* n) {
  static const char* all[] = {"avx512", "avx2", "base"};
  static const char* have[3];
  static const int count = [] {
    int c = 0;
    for (const char* isa : all)
      if (cpu_has(isa)) have[c++] = isa;
    return c;
  }();
  *n = count;
  return have;
}

const IsaKernels<float>& kernels_f32() {
  // read per call (cheap next to a time loop), so tests can pin every path in one process
  const char* env = std::getenv("FUSEDRNN_CPU_ISA");
  std::string want = env != nullptr && *env != '\0' ? env : "auto";
  if (want == "auto") {
    int n = 0;
    want = supported_isas(&n)[0];
  }
  TORCH_CHECK(want == "avx512" || want == "avx2" || want == "base",
              "fusedrnn: FUSEDRNN_CPU_ISA must be one of auto, avx512, avx2, base, got '", want,
              "'");
  TORCH_CHECK(cpu_has(want.c_str()), "fusedrnn: FUSEDRNN_CPU_ISA=", want,
              " but this CPU (or build) does not support it");
  if (want == "avx512") return *avx512_kernels();
  if (want == "avx2") return *avx2_kernels();
  return *base_kernels_f32();
}

const IsaKernels<double>& kernels_f64() { return *base_kernels_f64(); }

}  // namespace cpu
}  // namespace fusedrnn
