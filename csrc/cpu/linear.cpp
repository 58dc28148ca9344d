// The CPU backend's GEMMs outside the time loop: fusedrnn::rows_linear (the layers' input
// projections and, through its autograd formula in ops/cpu.py, their input and weight
// gradients) and the weight gradients of recurrence_bwd. All run gemm_impl.h's rows_mm: each
// output row reduced in a fixed order, rows split over threads, so results are bitwise the same
// with any thread count and, for a row of the batch, alone or among others (docs/cpu_backend.md).
#include "kernel.h"
#include "recurrence.h"

namespace fusedrnn {
namespace cpu {

namespace {

// A 2-D operand as rows_mm reads it: element (i, k) = p[trans ? k * ld + i : i * ld + k].
struct Operand {
  bool trans;
  int64_t ld;
};

// m itself when one of its strides is 1, else a row-major copy.
Tensor as_operand(const Tensor& m, Operand* op) {
  if (m.stride(1) == 1) {
    *op = {false, m.stride(0)};
    return m;
  }
  if (m.stride(0) == 1) {
    *op = {true, m.stride(1)};
    return m;
  }
  *op = {false, m.size(1)};
  return at::empty(m.sizes(), m.options()).copy_(m);
}

template <typename T>
void matmul_rows_t(const IsaKernels<T>& K, const Tensor& a_in, const Tensor& w_in,
                   const T* bias, bool accumulate, Tensor& out) {
  Operand ao, wo;
  const Tensor a = as_operand(a_in, &ao), w = as_operand(w_in, &wo);
  const int64_t M = a.size(0), Kd = a.size(1), N = w.size(0);
  if (M == 0 || N == 0) return;
  const int64_t uw = int64_t(K.pack_size(1, 1, 1));  // units per panel
  const int64_t panels = (N + uw - 1) / uw;
  // B is packed one chunk of kKc rows at a time (gemm_impl.h reduces in the same chunks, so the
  // results are those of one call over all of K): a weight gradient's B is a whole [T*B, I]
  // activation, which packed at once would add its size to the training memory
  constexpr int64_t kKc = 256;
  Tensor packed = at::empty({int64_t(K.pack_size(1, N, std::min(Kd, kKc)))}, out.options());
  T* pk = packed.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  const T* ap = a.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t ldo = out.stride(0);
  const int64_t grain = std::max<int64_t>(8, (int64_t(1) << 18) / std::max<int64_t>(1, N * Kd));
  for (int64_t k0 = 0; k0 < std::max<int64_t>(Kd, 1); k0 += kKc) {
    const int64_t kc = std::min(kKc, Kd - k0);
    // B(k, n) = w[n, k]: pack_t's `trans` is the opposite of how w is stored; in pieces of
    // (panel, kPk values of k), so that a narrow B (one panel: a weight gradient's) is packed by
    // every thread too. A panel's chunk is [kc][uw], so a k piece is a contiguous part of it.
    constexpr int64_t kPk = 32;
    const int64_t kpieces = (kc + kPk - 1) / kPk;
    at::parallel_for(0, panels * kpieces, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t p = q / kpieces, ks = (q % kpieces) * kPk, kn = std::min(kPk, kc - ks);
        const int64_t n0 = p * uw, nu = std::min(uw, N - n0);
        const T* src = wo.trans ? wp + (k0 + ks) * wo.ld + n0 : wp + n0 * wo.ld + k0 + ks;
        K.pack(1, src, wo.ld, !wo.trans, nu, kn, pk + p * kc * uw + ks * uw);
      }
    });
    const T* ak = ao.trans ? ap + k0 * ao.ld : ap + k0;
    at::parallel_for(0, M, grain, [&](int64_t i0, int64_t i1) {
      K.rows_mm(ao.trans, ak, ao.ld, i0, i1, kc, pk, N, bias, accumulate || k0 > 0, op, ldo);
    });
  }
}

}  // namespace

void matmul_rows(const Tensor& a, const Tensor& w, const Tensor& bias, bool accumulate,
                 Tensor& out) {
  TORCH_CHECK(out.stride(1) == 1, "fusedrnn: matmul_rows needs a row-major output");
  if (out.scalar_type() == at::kDouble)
    matmul_rows_t<double>(kernels_f64(), a, w, bias.defined() ? bias.data_ptr<double>() : nullptr,
                          accumulate, out);
  else
    matmul_rows_t<float>(kernels_f32(), a, w, bias.defined() ? bias.data_ptr<float>() : nullptr,
                         accumulate, out);
}

Tensor rows_linear(const Tensor& a, const Tensor& w, const OptTensor& b) {
  TORCH_CHECK(a.dim() == 2, "fusedrnn::rows_linear: a must be 2-D [M, K], got shape ", a.sizes());
  TORCH_CHECK(w.dim() == 2 && w.size(1) == a.size(1),
              "fusedrnn::rows_linear: w must have shape [N, ", a.size(1), "], got ", w.sizes());
  const auto dt = a.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16,
              "fusedrnn::rows_linear: float32, float64 or bfloat16, got ", dt);
  TORCH_CHECK(w.scalar_type() == dt, "fusedrnn::rows_linear: w must have dtype ", dt, ", got ",
              w.scalar_type());
  const bool has_b = b.has_value() && b->defined();
  if (has_b)
    TORCH_CHECK(b->scalar_type() == dt && b->dim() == 1 && b->size(0) == w.size(0),
                "fusedrnn::rows_linear: b must be [", w.size(0), "] of dtype ", dt);
  TORCH_CHECK(a.device().is_cpu() && w.device().is_cpu(),
              "fusedrnn::rows_linear: the cpu backend needs CPU tensors");
  const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor a_c = a.to(acc), w_c = w.to(acc);
  const Tensor b_c = has_b ? b->to(acc).contiguous() : Tensor();
  Tensor out = alloc({a.size(0), w.size(0)}, a_c.options());
  matmul_rows(a_c, w_c, b_c, false, out);
  return dt == at::kBFloat16 ? out.to(dt) : out;
}

}  // namespace cpu
}  // namespace fusedrnn
