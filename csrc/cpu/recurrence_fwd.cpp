// Forward of the CPU backend: checks and buffers here, the fused time loop in loops_impl.h (one
// thread per group of rows for the whole sequence, see kernel.h).
#include <omp.h>

#include "kernel.h"
#include "recurrence.h"

namespace fusedrnn {
namespace cpu {

namespace {

struct FwdOut {
  Tensor y, h, c, ws;  // y [T,B,H_out]; h [B,H_out]; c [B,H]; ws [T,B,width] (ws_layout)
  WsLayout wl;
};

// Runs fn(UnitSlice) on `threads` OpenMP threads that split one row set's units (kernel.h), or
// fn({}) on this thread alone where no more threads are to be had (inside a parallel region).
template <typename F>
void run_unit_split(int threads, const F& fn) {
  StepBarrier bar;
#pragma omp parallel num_threads(threads)
  {
    const int n = omp_get_num_threads();  // the threads actually given: the barrier counts them
#pragma omp single
    bar.n = n;  // (the end of `single` is a barrier: every thread sees n before it starts)
    fn(UnitSlice{omp_get_thread_num(), n, n > 1 ? &bar : nullptr});
  }
}

// How many threads split the units of a single row group (1: none). Only the forward, without a
// projection (its product needs every unit of the step) or a row normalisation (it needs every
// unit of the row), when the rows are fewer than the threads and a step has enough work to pay
// for a barrier: ~0.2 us against ~1 us for 16k multiply-adds.
int unit_split_threads(Cell cell, const RowPartition& part, int64_t macs_per_row_step,
                       bool proj) {
  constexpr int64_t kMinMacsPerStep = int64_t(1) << 13;
  const int threads = at::get_num_threads();
  if (proj || norm_recurrent(cell) || norm_state(cell) || threads < 2 || part.groups() != 1 ||
      at::in_parallel_region())
    return 1;
  const int64_t rows = part.offsets[1];
  if (rows == 0 || rows >= threads || rows * macs_per_row_step < kMinMacsPerStep) return 1;
  return threads;  // a thread left without a whole panel only meets the others at the barrier
}

template <typename T>
void forward(Cell cell, const IsaKernels<T>& K, const Tensor& xw, const Tensor& w_hh,
             const Tensor& b_hh, const Tensor& h0, const Tensor& w_hr, const Lengths& L,
             bool reverse, const CarryArgs& carry, const std::vector<Tensor>& cp, FwdOut& o) {
  const int G = num_gates(cell);
  const int64_t TT = xw.size(0), B = xw.size(1), GH = xw.size(2), H = GH / G,
                Ho = h0.size(1);
  const bool proj = w_hr.defined();
  const auto opts = xw.options();
  // the recurrent weights in the micro-kernel's panel layout, once per call
  Tensor wp = at::empty({int64_t(K.pack_size(G, H, Ho))}, opts);
  K.pack(G, w_hh.data_ptr<T>(), Ho, /*trans=*/true, H, Ho, wp.data_ptr<T>());
  Tensor wrp;
  if (proj) {
    wrp = at::empty({int64_t(K.pack_size(1, Ho, H))}, opts);
    K.pack(1, w_hr.data_ptr<T>(), H, /*trans=*/true, Ho, H, wrp.data_ptr<T>());
  }
  FwdLoop<T> a{TT, B, H, Ho, reverse, L.len.data(), xw.data_ptr<T>(),
               b_hh.defined() ? b_hh.data_ptr<T>() : nullptr, h0.data_ptr<T>(), wp.data_ptr<T>(),
               proj ? wrp.data_ptr<T>() : nullptr, o.y.data_ptr<T>(), o.h.data_ptr<T>(),
               has_cell_state(cell) ? o.c.data_ptr<T>() : nullptr,
               o.wl.cs_off >= 0 ? o.ws.data_ptr<T>() + o.wl.cs_off : nullptr,
               o.wl.act_off >= 0 ? o.ws.data_ptr<T>() + o.wl.act_off : nullptr, o.wl.width};
  for (size_t k = 0; k < cp.size(); ++k) a.cell_params[k] = cp[k].data_ptr<T>();
  if (carry.reset.defined()) a.reset = carry.reset.data_ptr<T>();
  if (carry.zoneout.defined()) {
    a.zo = carry.zoneout.data_ptr<T>();
    a.zw = carry.zoneout.size(2);
  }
  const RowPartition part = partition_rows(L, GH * Ho + (proj ? H * Ho : 0));
  const int split = unit_split_threads(cell, part, GH * Ho, proj);
  if (split > 1)  // fewer rows than threads (B = 1): the threads split the units instead
    return run_unit_split(split, [&](UnitSlice us) {
      K.fwd(cell, a, RowSet{part.rows.data(), part.offsets[1], us});
    });
  run_groups(part, [&](int64_t g) {
    const int64_t o0 = part.offsets[g];
    K.fwd(cell, a, RowSet{part.rows.data() + o0, part.offsets[g + 1] - o0});
  });
}

void check_same(const char* name, const Tensor& t, const Tensor& xw) {
  TORCH_CHECK(t.scalar_type() == xw.scalar_type(), "fusedrnn: ", name, " must have dtype ",
              xw.scalar_type(), " like xw, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "fusedrnn: the cpu backend needs CPU tensors, got ", name,
              " on ", t.device());
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> recurrence_fwd(
    c10::string_view mode, const Tensor& xw, const Tensor& w_hh, const OptTensor& b_hh,
    const Tensor& h0, const OptTensor& c0, const OptTensor& lengths, bool reverse,
    const OptTensor& w_hr, bool save, const OptTensor& reset, const OptTensor& zoneout,
    const OptTensorList& cell_params) {
  const Cell cell = parse_mode(mode);
  const int64_t G = num_gates(cell);
  TORCH_CHECK(xw.dim() == 3, "fusedrnn: xw must be 3-D [T, B, G*H], got shape ", xw.sizes());
  const auto dt = xw.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16,
              "fusedrnn: the cpu backend supports float32, float64 and bfloat16, got ", dt);
  const int64_t T = xw.size(0), B = xw.size(1), GH = xw.size(2);
  TORCH_CHECK(GH % G == 0, "fusedrnn: xw.size(-1) must be a multiple of ", G, " for ",
              std::string(mode), ", got ", GH);
  const int64_t H = GH / G;
  const bool proj = w_hr.has_value() && w_hr->defined();
  TORCH_CHECK(!proj || supports_projection(cell), "fusedrnn: w_hr (projection) is only "
              "supported for LSTM, got mode ", std::string(mode));
  const int64_t Ho = proj ? w_hr->size(0) : H;
  if (proj) {
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == H, "fusedrnn: w_hr must have shape [P, ",
                H, "], got ", w_hr->sizes());
    check_same("w_hr", *w_hr, xw);
  }
  check_same("xw", xw, xw);
  check_same("w_hh", w_hh, xw);
  check_same("h0", h0, xw);
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == GH && w_hh.size(1) == Ho,
              "fusedrnn: w_hh must have shape [", GH, ", ", Ho, "], got ", w_hh.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == Ho,
              "fusedrnn: h0 must have shape [", B, ", ", Ho, "], got ", h0.sizes());
  const bool has_b = b_hh.has_value() && b_hh->defined();
  if (has_b) {
    check_same("b_hh", *b_hh, xw);
    TORCH_CHECK(b_hh->dim() == 1 && b_hh->size(0) == GH, "fusedrnn: b_hh must have shape (",
                GH, ",), got ", b_hh->sizes());
  }
  const bool has_c0 = c0.has_value() && c0->defined();
  if (has_c0) {
    TORCH_CHECK(has_cell_state(cell), "fusedrnn: c0 is only used by LSTM, got mode ",
                std::string(mode));
    check_same("c0", *c0, xw);
    TORCH_CHECK(c0->dim() == 2 && c0->size(0) == B && c0->size(1) == H,
                "fusedrnn: c0 must have shape [", B, ", ", H, "], got ", c0->sizes());
  }

  // bfloat16 runs in float32 (the accumulation dtype) and casts the results back
  const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;
  auto prep = [&](const Tensor& t) { return t.to(acc).contiguous(); };
  const Tensor xw_c = prep(xw), w_c = prep(w_hh), b_c = has_b ? prep(*b_hh) : Tensor(),
               h0_c = prep(h0), wr_c = proj ? prep(*w_hr) : Tensor();
  const Lengths L = make_lengths(lengths, T, B);
  const CarryArgs carry = carry_args(cell, reset, zoneout, T, B, H, Ho, acc);
  const std::vector<Tensor> cp = cell_params_of(cell, cell_params, xw, H, acc);

  const auto opts = xw_c.options();
  FwdOut o;
  o.y = alloc({T, B, Ho}, opts);
  o.h = alloc({B, Ho}, opts);
  const bool has_c = has_cell_state(cell);
  o.c = has_c ? (has_c0 ? c0->to(acc, false, true).contiguous() : at::zeros({B, H}, opts))
              : at::empty({0}, opts);
  o.wl = ws_layout(cell, H, save, proj, carry.zoneout.defined());
  o.ws = o.wl.width > 0 ? alloc({T, B, o.wl.width}, opts) : at::empty({0}, opts);

  if (acc == at::kDouble)
    forward<double>(cell, kernels_f64(), xw_c, w_c, b_c, h0_c, wr_c, L, reverse, carry, cp, o);
  else
    forward<float>(cell, kernels_f32(), xw_c, w_c, b_c, h0_c, wr_c, L, reverse, carry, cp, o);

  if (dt == at::kBFloat16)
    return {o.y.to(dt), o.h.to(dt), o.c.to(dt), o.ws};
  return {o.y, o.h, o.c, o.ws};
}

}  // namespace cpu
}  // namespace fusedrnn
