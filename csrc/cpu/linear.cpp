// The CPU backend's GEMMs outside the time loop: fusedrnn::rows_linear (the layers' input
// projections and, through its autograd formula in ops/cpu.py, their input and weight
// gradients) and the weight gradients of recurrence_bwd. All run gemm_impl.h's rows_mm: each
// output row reduced in a fixed order, rows split over threads, so results are bitwise the same
// with any thread count and, for a row of the batch, alone or among others (docs/cpu_backend.md).
#include "kernel.h"
#include "recurrence.h"

#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

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

// Rows [a0, a0 + n) of A give rows [o0, o0 + n) of the output (rows_linear_at's indices,
// cut into runs of consecutive rows: a packed batch's are one run per time step).
struct Run {
  int64_t a0, o0, n;
};

// The output rows [i0, i1) of the concatenated runs (`starts`: each run's first such row, and
// the total at the end), split at run boundaries.
template <typename F>
void for_run_rows(const std::vector<Run>& runs, const std::vector<int64_t>& starts, int64_t i0,
                  int64_t i1, F&& f) {
  int64_t r = std::upper_bound(starts.begin(), starts.end(), i0) - starts.begin() - 1;
  for (; i0 < i1; ++r) {
    const int64_t s = i0 - starts[r], e = std::min(i1 - starts[r], runs[r].n);
    f(runs[r], s, e);
    i0 = starts[r] + e;
  }
}

template <typename T>
void matmul_rows_t(const IsaKernels<T>& K, const Tensor& a_in, const Tensor& w_in,
                   const T* bias, bool accumulate, Tensor& out,
                   const std::vector<Run>* runs = nullptr) {
  Operand ao, wo;
  const Tensor a = as_operand(a_in, &ao), w = as_operand(w_in, &wo);
  TORCH_INTERNAL_ASSERT(runs == nullptr || !ao.trans);
  std::vector<int64_t> starts;
  if (runs) {
    starts.reserve(runs->size() + 1);
    int64_t total = 0;
    for (const Run& r : *runs) {
      starts.push_back(total);
      total += r.n;
    }
    starts.push_back(total);
  }
  const int64_t M = runs ? starts.back() : a.size(0), Kd = a.size(1), N = w.size(0);
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
    const bool add = accumulate || k0 > 0;
    at::parallel_for(0, M, grain, [&](int64_t i0, int64_t i1) {
      if (!runs) {
        K.rows_mm(ao.trans, ak, ao.ld, i0, i1, kc, pk, N, bias, add, op, ldo);
        return;
      }
      for_run_rows(*runs, starts, i0, i1, [&](const Run& r, int64_t s, int64_t e) {
        K.rows_mm(false, ak + (r.a0 + s) * ao.ld, ao.ld, 0, e - s, kc, pk, N, bias, add,
                  op + (r.o0 + s) * ldo, ldo);
      });
    });
  }
}

// matmul_rows_t in out's dtype (float64, else float32), over `runs` when given
void matmul_rows_any(const Tensor& a, const Tensor& w, const Tensor& bias, bool accumulate,
                     Tensor& out, const std::vector<Run>* runs) {
  if (out.scalar_type() == at::kDouble)
    matmul_rows_t<double>(kernels_f64(), a, w, bias.defined() ? bias.data_ptr<double>() : nullptr,
                          accumulate, out, runs);
  else
    matmul_rows_t<float>(kernels_f32(), a, w, bias.defined() ? bias.data_ptr<float>() : nullptr,
                         accumulate, out, runs);
}

}  // namespace

void matmul_rows(const Tensor& a, const Tensor& w, const Tensor& bias, bool accumulate,
                 Tensor& out) {
  TORCH_CHECK(out.stride(1) == 1, "fusedrnn: matmul_rows needs a row-major output");
  matmul_rows_any(a, w, bias, accumulate, out, nullptr);
}

namespace {

// Rows given by an optional int64 index: `count` positions, position i is idx[i] (or i).
std::vector<int64_t> index_rows(const char* op, const OptTensor& idx, int64_t count,
                                int64_t limit, const char* name) {
  std::vector<int64_t> v(count);
  if (!idx.has_value() || !idx->defined()) {
    for (int64_t i = 0; i < count; ++i) v[i] = i;
  } else {
    const Tensor t = idx->to(at::kCPU).contiguous();
    const int64_t* p = t.data_ptr<int64_t>();
    for (int64_t i = 0; i < count; ++i) {
      TORCH_CHECK(p[i] >= 0 && p[i] < limit, op, ": ", name, "[", i, "] = ", p[i],
                  " is out of range [0, ", limit, ")");
      v[i] = p[i];
    }
  }
  return v;
}

// The (src, dst, out_rows) arguments of rows_linear_at and move_rows, checked: out[dst[i]] comes
// from row src[i] of `a` (either index None: 0..n-1), as runs of consecutive rows, and which
// output rows no run writes (zeros).
struct RowMap {
  std::vector<Run> runs;
  std::vector<uint8_t> covered;
  int64_t out_rows;

  RowMap(const char* op, const Tensor& a, const OptTensor& src, const OptTensor& dst,
         int64_t rows) {
    TORCH_CHECK(a.dim() == 2, op, ": the input must be 2-D, got shape ", a.sizes());
    for (const auto& [idx, name] : {std::pair{&src, "src"}, std::pair{&dst, "dst"}})
      if (idx->has_value() && (*idx)->defined())
        TORCH_CHECK((*idx)->dim() == 1 && (*idx)->scalar_type() == at::kLong, op, ": ", name,
                    " must be a 1-D int64 tensor, got ", (*idx)->scalar_type(), " of shape ",
                    (*idx)->sizes());
    const bool has_src = src.has_value() && src->defined();
    const bool has_dst = dst.has_value() && dst->defined();
    const int64_t n = has_src ? src->numel() : has_dst ? dst->numel() : a.size(0);
    TORCH_CHECK(!has_src || !has_dst || dst->numel() == n, op, ": src and dst must have the "
                "same length, got ", n, " and ", has_dst ? dst->numel() : 0);
    TORCH_CHECK(has_src || n == a.size(0), op, ": without src, dst must have one entry per row "
                "of the input (", a.size(0), "), got ", n);
    out_rows = rows < 0 ? n : rows;
    TORCH_CHECK(has_dst || out_rows == n, op, ": without dst the output has one row per "
                "computed row (", n, "), got out_rows = ", out_rows);
    const std::vector<int64_t> si = index_rows(op, src, n, a.size(0), "src");
    const std::vector<int64_t> di = index_rows(op, dst, n, out_rows, "dst");
    covered.assign(out_rows, 0);
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK(!covered[di[i]], op, ": dst holds row ", di[i], " twice");
      covered[di[i]] = 1;
      if (!runs.empty() && runs.back().a0 + runs.back().n == si[i] &&
          runs.back().o0 + runs.back().n == di[i])
        ++runs.back().n;
      else
        runs.push_back({si[i], di[i], 1});
    }
  }

  // an output for these rows (the CPU buffer cache), the rows no run writes zero-filled
  Tensor output(int64_t cols, const at::TensorOptions& opts) const {
    Tensor out = alloc({out_rows, cols}, opts);
    const size_t row_bytes = out.element_size() * cols;
    auto* base = static_cast<char*>(out.data_ptr());
    at::parallel_for(0, out_rows, 4096, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        if (!covered[r]) std::memset(base + r * row_bytes, 0, row_bytes);
    });
    return out;
  }
};

// rows_linear's checks, casts and GEMM; with `map`, over its rows (rows_linear_at)
Tensor linear_impl(const char* op, const Tensor& a, const Tensor& w, const OptTensor& b,
                   const RowMap* map) {
  TORCH_CHECK(a.dim() == 2, op, ": a must be 2-D [M, K], got shape ", a.sizes());
  TORCH_CHECK(w.dim() == 2 && w.size(1) == a.size(1), op, ": w must have shape [N, ", a.size(1),
              "], got ", w.sizes());
  const auto dt = a.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16, op,
              ": float32, float64 or bfloat16, got ", dt);
  TORCH_CHECK(w.scalar_type() == dt, op, ": w must have dtype ", dt, ", got ", w.scalar_type());
  const bool has_b = b.has_value() && b->defined();
  if (has_b)
    TORCH_CHECK(b->scalar_type() == dt && b->dim() == 1 && b->size(0) == w.size(0), op,
                ": b must be [", w.size(0), "] of dtype ", dt);
  TORCH_CHECK(a.device().is_cpu() && w.device().is_cpu(), op,
              ": the cpu backend needs CPU tensors");
  const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;
  // the runs read rows of A in place: it must be row-major
  const Tensor a_c = map ? a.to(acc).contiguous() : a.to(acc), w_c = w.to(acc);
  const Tensor b_c = has_b ? b->to(acc).contiguous() : Tensor();
  Tensor out = map ? map->output(w.size(0), a_c.options())
                   : alloc({a.size(0), w.size(0)}, a_c.options());
  matmul_rows_any(a_c, w_c, b_c, false, out, map ? &map->runs : nullptr);
  return dt == at::kBFloat16 ? out.to(dt) : out;
}

}  // namespace

Tensor rows_linear_at(const Tensor& a, const Tensor& w, const OptTensor& b, const OptTensor& src,
                      const OptTensor& dst, int64_t out_rows) {
  const RowMap map("fusedrnn::rows_linear_at", a, src, dst, out_rows);
  return linear_impl("fusedrnn::rows_linear_at", a, w, b, &map);
}

Tensor move_rows(const Tensor& a, const OptTensor& src, const OptTensor& dst, int64_t out_rows) {
  const RowMap map("fusedrnn::move_rows", a, src, dst, out_rows);
  TORCH_CHECK(a.device().is_cpu(), "fusedrnn::move_rows: the cpu backend needs CPU tensors");
  const Tensor a_c = a.contiguous();
  Tensor out = map.output(a.size(1), a_c.options());
  const size_t row_bytes = a_c.element_size() * a.size(1);
  const auto* in = static_cast<const char*>(a_c.data_ptr());
  auto* o = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, int64_t(map.runs.size()), 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const Run& run = map.runs[r];
      std::memcpy(o + run.o0 * row_bytes, in + run.a0 * row_bytes, run.n * row_bytes);
    }
  });
  return out;
}

Tensor rows_linear(const Tensor& a, const Tensor& w, const OptTensor& b) {
  return linear_impl("fusedrnn::rows_linear", a, w, b, nullptr);
}

}  // namespace cpu
}  // namespace fusedrnn

// Defined here rather than in ops.cpp: a packed batch's projection and row moves in the layers
// (python/fusedrnn/nn/rnn.py _project, _PackedRows), differentiable through ops/cpu.py.
TORCH_LIBRARY_FRAGMENT(fusedrnn, m) {
  m.def("rows_linear_at(Tensor a, Tensor w, Tensor? b, Tensor? src, Tensor? dst, int out_rows) "
        "-> Tensor");
  m.def("move_rows(Tensor a, Tensor? src, Tensor? dst, int out_rows) -> Tensor");
}

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("rows_linear_at", &fusedrnn::cpu::rows_linear_at);
  m.impl("move_rows", &fusedrnn::cpu::move_rows);
}
