// Forward time loop of the CPU backend: per step one GEMM for the recurrent pre-activations,
// then the cell's pointwise body (cells.h) over the live rows in parallel.
#include <ATen/Parallel.h>

#include <optional>
#include <vector>

#include "pointwise.h"

#include "recurrence.h"

namespace fusedrnn {
namespace cpu {

namespace {

struct FwdArgs {
  Tensor xw, w_hh, b_hh, h0, c0, w_hr;  // contiguous, in the compute dtype; b_hh/c0/w_hr may be
                                        // undefined
  Lengths L;
  bool reverse;
  int64_t T, B, H, H_out;
};

struct FwdOut {
  Tensor y, h, c, cs;  // y [T,B,H_out]; h [B,H_out]; c [B,H]; cs [T,B,H] (LSTM cell states)
};

template <Cell C, typename T>
void forward_loop(const FwdArgs& a, FwdOut& o) {
  constexpr int G = num_gates(C);  // the gate activations are recomputed by backward, not saved
  constexpr bool kLstm = C == Cell::LSTM;
  const int64_t TT = a.T, B = a.B, H = a.H, GH = G * a.H, Ho = a.H_out;
  const bool proj = a.w_hr.defined();
  const auto opts = a.xw.options();

  Tensor hh = alloc({B, GH}, opts);                                   // W_hh h + b_hh
  Tensor r = proj ? alloc({B, H}, opts) : Tensor();                   // o * tanh(c), unprojected
  Tensor hp = proj ? alloc({B, Ho}, opts) : Tensor();                 // projected h of the step

  const T* xw = a.xw.data_ptr<T>();
  const T* w_hh = a.w_hh.data_ptr<T>();                                // [G*H, H_out]
  const T* bias = a.b_hh.defined() ? a.b_hh.data_ptr<T>() : nullptr;  // [G*H]
  T* y = o.y.data_ptr<T>();
  T* h = o.h.data_ptr<T>();
  T* c = kLstm ? o.c.data_ptr<T>() : nullptr;
  T* cs = kLstm ? o.cs.data_ptr<T>() : nullptr;
  T* hhp = hh.data_ptr<T>();
  T* rp = proj ? r.data_ptr<T>() : nullptr;
  const Lengths& L = a.L;
  const bool masked = L.mode == LenMode::kMask;
  const std::vector<T> zeros_v(std::max(H, Ho), T(0));
  const T* zeros = zeros_v.data();

  SmallGemmGuard gemm_threads(B * GH * Ho);
  // after the guard: the weights are packed for the thread count the steps run with
  const StepGemm<T> rec(true, B, GH, Ho, w_hh, Ho);  // h [nb, H_out] @ W_hh^T [H_out, G*H]
  std::optional<StepGemm<T>> prj;                     // r [nb, H] @ W_hr^T [H, P]
  if (proj) prj.emplace(true, B, Ho, H, a.w_hr.data_ptr<T>(), H);
  for (int64_t s = 0; s < TT; ++s) {
    const int64_t t = a.reverse ? TT - 1 - s : s;
    const int64_t nb = L.active[t];  // live prefix (all rows when masking)
    if (nb > 0) {
      // hh[:nb] = h[:nb] @ W_hh^T + b_hh
      if (bias)
        for (int64_t b = 0; b < nb; ++b) std::copy(bias, bias + GH, hhp + b * GH);
      rec.run(nb, h, Ho, bias ? T(1) : T(0), hhp, GH);
    }
    T* y_t = y + t * B * Ho;
    FwdRows<T> rows{xw + t * B * GH, hhp, h, c, kLstm ? cs + t * B * H : nullptr, y_t, rp,
                    zeros, masked ? L.len.data() : nullptr, t, H, Ho};
    at::parallel_for(0, nb, row_grain(GH), [&](int64_t b0, int64_t b1) {
      fwd_rows<C, T>(rows, b0, b1);
    });
    if (proj && nb > 0) {
      T* hpp = hp.data_ptr<T>();
      prj->run(nb, rp, H, T(0), hpp, Ho);  // [nb, P]
      for (int64_t b = 0; b < nb; ++b) {
        const bool live = !masked || L.live(t, b);
        for (int64_t k = 0; k < Ho; ++k) {
          if (live) h[b * Ho + k] = hpp[b * Ho + k];
          y_t[b * Ho + k] = live ? hpp[b * Ho + k] : T(0);
        }
      }
    }
    if (nb < B) {
      // rows past their length (sorted lengths): no work, zero outputs and saved states
      std::fill(y_t + nb * Ho, y_t + B * Ho, T(0));
      if (kLstm) std::fill(cs + (t * B + nb) * H, cs + (t + 1) * B * H, T(0));
    }
  }
}

template <typename T>
void forward_dispatch(Cell cell, const FwdArgs& a, FwdOut& o) {
  switch (cell) {
    case Cell::RNN_TANH: return forward_loop<Cell::RNN_TANH, T>(a, o);
    case Cell::RNN_RELU: return forward_loop<Cell::RNN_RELU, T>(a, o);
    case Cell::LSTM: return forward_loop<Cell::LSTM, T>(a, o);
    case Cell::GRU: return forward_loop<Cell::GRU, T>(a, o);
  }
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
    const OptTensor& w_hr) {
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
  TORCH_CHECK(!proj || cell == Cell::LSTM, "fusedrnn: w_hr (projection) is only supported for "
              "LSTM, got mode ", std::string(mode));
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
    TORCH_CHECK(cell == Cell::LSTM, "fusedrnn: c0 is only used by LSTM, got mode ",
                std::string(mode));
    check_same("c0", *c0, xw);
    TORCH_CHECK(c0->dim() == 2 && c0->size(0) == B && c0->size(1) == H,
                "fusedrnn: c0 must have shape [", B, ", ", H, "], got ", c0->sizes());
  }

  // bfloat16 runs in float32 (the accumulation dtype) and casts the results back
  const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;
  auto prep = [&](const Tensor& t) { return t.to(acc).contiguous(); };
  FwdArgs a;
  a.xw = prep(xw);
  a.w_hh = prep(w_hh);
  a.b_hh = has_b ? prep(*b_hh) : Tensor();
  a.h0 = h0;
  a.w_hr = proj ? prep(*w_hr) : Tensor();
  a.L = make_lengths(lengths, T, B);
  a.reverse = reverse;
  a.T = T; a.B = B; a.H = H; a.H_out = Ho;

  const auto opts = a.xw.options();
  FwdOut o;
  o.y = alloc({T, B, Ho}, opts);
  o.h = h0.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
  const bool lstm = cell == Cell::LSTM;
  o.c = lstm ? (has_c0 ? c0->to(acc, false, true).contiguous() : at::zeros({B, H}, opts))
             : at::empty({0}, opts);
  o.cs = lstm ? alloc({T, B, H}, opts) : at::empty({0}, opts);

  if (acc == at::kDouble)
    forward_dispatch<double>(cell, a, o);
  else
    forward_dispatch<float>(cell, a, o);

  if (dt == at::kBFloat16)
    return {o.y.to(dt), o.h.to(dt), o.c.to(dt), o.cs};
  return {o.y, o.h, o.c, o.cs};
}

}  // namespace cpu
}  // namespace fusedrnn
