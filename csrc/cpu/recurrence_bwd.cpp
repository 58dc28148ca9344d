// Backward (BPTT) of the CPU backend: a loop over the steps in reverse processing order that
// carries dh (and dc), writes the gate gradients of every step, and after the loop the weight
// gradients as GEMMs over all T*B rows.
#include <ATen/Parallel.h>

#include <vector>

#include "pointwise.h"

#include "recurrence.h"

namespace fusedrnn {
namespace cpu {

namespace {

struct BwdArgs {
  Tensor dy, xw, w_hh, h0, c0, w_hr, y, cs;  // compute dtype, contiguous; dy/c0/w_hr may be
                                             // undefined
  Lengths L;
  bool reverse;
  int64_t T, B, H, H_out;
  double clip = 0.0;  // recurrent_grad_clip; 0 = off
};

struct BwdOut {
  Tensor dxw;   // [T, B, G*H]  holds W_hh h_prev + b_hh of every step on entry (gate
                //              recompute), overwritten step by step with d(pre-activation)
  Tensor dhn;   // [T, B, H]    GRU: recurrent-side gradient of n (dxw_n * r); else undefined
  Tensor dh;    // [B, H_out]   carried dL/dh, ends as dh0
  Tensor dc;    // [B, H]       carried dL/dc (LSTM), ends as dc0
  Tensor dhp;   // [T, B, P]    projection: dL/dh per step (for d_w_hr)
  Tensor r;     // [T, B, H]    projection: o * tanh(c) per step (for d_w_hr)
};

// recurrent_grad_clip: what a live step sent back to its input state (dh, and dc for LSTM) is
// clamped to [-clip, clip]; rows that did not run this step pass their gradient through as is.
template <typename T>
void clamp_sent(const BwdArgs& a, T* dh, T* dc, int64_t t, int64_t nb, bool masked) {
  const T lo = T(-a.clip), hi = T(a.clip);
  for (int64_t b = 0; b < nb; ++b) {
    if (masked && !a.L.live(t, b)) continue;
    for (int64_t k = 0; k < a.H_out; ++k) dh[b * a.H_out + k] = std::min(hi, std::max(lo, dh[b * a.H_out + k]));
    if (dc)
      for (int64_t k = 0; k < a.H; ++k) dc[b * a.H + k] = std::min(hi, std::max(lo, dc[b * a.H + k]));
  }
}

template <Cell C, typename T>
void backward_loop(const BwdArgs& a, BwdOut& o) {
  constexpr int G = num_gates(C);
  constexpr bool kLstm = C == Cell::LSTM, kGru = C == Cell::GRU;
  const int64_t TT = a.T, B = a.B, H = a.H, GH = G * a.H, Ho = a.H_out;
  const bool proj = a.w_hr.defined();
  const auto opts = o.dh.options();
  const Lengths& L = a.L;
  const bool masked = L.mode == LenMode::kMask;
  const std::vector<T> zeros_v(std::max(H, Ho), T(0));
  const T* zeros = zeros_v.data();

  // GRU's per-step recurrent gradient differs from dxw in the n block: gather it here so that
  // dh_prev is one GEMM per step.
  Tensor dgh = kGru ? alloc({B, GH}, opts) : Tensor();  // [B, 3H]
  Tensor dr = proj ? alloc({B, H}, opts) : Tensor();    // dL/d(o * tanh c) of the step

  const T* dy = a.dy.defined() ? a.dy.data_ptr<T>() : nullptr;
  const T* xw = a.xw.data_ptr<T>();
  const T* y = a.y.data_ptr<T>();
  const T* h0 = a.h0.data_ptr<T>();
  const T* c0 = a.c0.defined() ? a.c0.data_ptr<T>() : nullptr;
  const T* cs = kLstm ? a.cs.data_ptr<T>() : nullptr;
  T* dxw = o.dxw.data_ptr<T>();
  T* dhn = kGru ? o.dhn.data_ptr<T>() : nullptr;
  T* dgh_p = kGru ? dgh.data_ptr<T>() : nullptr;
  T* dh = o.dh.data_ptr<T>();
  T* dc = kLstm ? o.dc.data_ptr<T>() : nullptr;
  T* dhp = proj ? o.dhp.data_ptr<T>() : nullptr;
  T* rr = proj ? o.r.data_ptr<T>() : nullptr;
  T* drp = proj ? dr.data_ptr<T>() : nullptr;

  // Unlike the forward, the per-step GEMMs here are not packed (StepGemm): for dg @ W_hh MKL's
  // sgemm takes a no-copy kernel, and packing W_hh measured 1-5 % slower (docs/cpu_backend.md).
  SmallGemmGuard gemm_threads(B * GH * Ho);
  const T* w_hh = a.w_hh.data_ptr<T>();                    // [G*H, H_out]
  const T* w_hr = proj ? a.w_hr.data_ptr<T>() : nullptr;  // [P, H]
  for (int64_t s = TT - 1; s >= 0; --s) {
    const int64_t t = a.reverse ? TT - 1 - s : s;
    const int64_t nb = L.active[t];
    if (proj && nb > 0) {
      // dL/dh of this step = carried + from y; the carry restarts at 0 on live rows
      T* dhp_t = dhp + t * B * Ho;
      for (int64_t b = 0; b < nb; ++b) {
        const bool live = !masked || L.live(t, b);
        for (int64_t k = 0; k < Ho; ++k) {
          const int64_t i = b * Ho + k;
          dhp_t[i] = live ? dh[i] + (dy ? dy[t * B * Ho + i] : T(0)) : T(0);
          if (live) dh[i] = T(0);
        }
      }
      gemm_rows<T>(false, false, nb, H, Ho, dhp_t, Ho, w_hr, H, T(0), drp, H);  // [nb, H]
    }
    // lengths go in for sorted lengths too: a reversed sequence starts from h0 at len - 1
    BwdRows<T> rows{xw, y, dy, h0, c0, cs, drp, zeros,
                    L.mode == LenMode::kNone ? nullptr : L.len.data(),
                    dxw, dgh_p, dhn, dh, dc, rr, t, TT, B, H, Ho, a.reverse, masked};
    at::parallel_for(0, nb, row_grain(GH), [&](int64_t b0, int64_t b1) {
      bwd_rows<C, T>(rows, b0, b1);
    });
    if (nb > 0) {
      // dh_prev += dgates_hh @ W_hh over the live prefix
      const T* dg = kGru ? dgh_p : dxw + t * B * GH;  // [nb, G*H]
      gemm_rows<T>(false, false, nb, Ho, GH, dg, GH, w_hh, Ho, T(1), dh, Ho);
      if (a.clip > 0) clamp_sent(a, dh, dc, t, nb, masked);
    }
    if (nb < B) {
      std::fill(dxw + (t * B + nb) * GH, dxw + (t + 1) * B * GH, T(0));
      if (kGru) std::fill(dhn + (t * B + nb) * H, dhn + (t + 1) * B * H, T(0));
      if (proj) {
        std::fill(rr + (t * B + nb) * H, rr + (t + 1) * B * H, T(0));
        std::fill(dhp + (t * B + nb) * Ho, dhp + (t + 1) * B * Ho, T(0));
      }
    }
  }
}

// out [T, B, G*H] = W_hh h_prev + b_hh for every step, as one GEMM over the rows whose
// previous state is a y row plus the rows that start from h0.
void recurrent_preacts(Tensor& out, const Tensor& y, const Tensor& h0, const Tensor& w_hh,
                       const Tensor& b_hh, const Lengths& L, bool reverse) {
  const int64_t T = y.size(0), B = y.size(1), Ho = y.size(2), GH = w_hh.size(0);
  if (T == 0 || B == 0) return;
  const Tensor w_t = w_hh.t();  // [H_out, G*H]
  Tensor from_h0 = b_hh.defined() ? at::addmm(b_hh, h0, w_t) : at::mm(h0, w_t);  // [B, G*H]
  if (T > 1) {
    Tensor dst = (reverse ? out.narrow(0, 0, T - 1) : out.narrow(0, 1, T - 1)).view({-1, GH});
    const Tensor src = (reverse ? y.narrow(0, 1, T - 1) : y.narrow(0, 0, T - 1)).reshape({-1, Ho});
    if (b_hh.defined())
      at::addmm_out(dst, b_hh, src, w_t);
    else
      at::mm_out(dst, src, w_t);
  }
  out[reverse ? T - 1 : 0].copy_(from_h0);
  if (reverse && L.mode != LenMode::kNone) {
    // a reversed sequence starts at t = len - 1, from h0 (y[len] is a zero row)
    for (int64_t b = 0; b < B; ++b)
      if (L.len[b] > 0 && L.len[b] < T) out[L.len[b] - 1][b].copy_(from_h0[b]);
  }
}

template <typename T>
void backward_dispatch(Cell cell, const BwdArgs& a, BwdOut& o) {
  switch (cell) {
    case Cell::RNN_TANH: return backward_loop<Cell::RNN_TANH, T>(a, o);
    case Cell::RNN_RELU: return backward_loop<Cell::RNN_RELU, T>(a, o);
    case Cell::LSTM: return backward_loop<Cell::LSTM, T>(a, o);
    case Cell::GRU: return backward_loop<Cell::GRU, T>(a, o);
  }
}

// out [K, H_out] = sum over live (t, b) of dg[t, b]^T h_prev(t, b), as one GEMM over the rows
// whose previous state is a y row, plus one over the rows that started from h0.
//   dg [T, B, K] (a column block of the gate gradients, possibly strided), y [T, B, H_out]
void weight_grad(Tensor out, const Tensor& dg, const Tensor& y, const Tensor& h0,
                 const Lengths& L, bool reverse) {
  const int64_t T = dg.size(0), B = dg.size(1), K = dg.size(2), Ho = y.size(2);
  out.zero_();
  if (T == 0 || B == 0) return;
  if (T > 1) {
    // forward: step t >= 1 continues from y[t-1]; reverse: step t < T-1 from y[t+1] (for a
    // sequence's first step t = len-1 that y row is zero, so h0 is added below instead)
    const Tensor g = reverse ? dg.narrow(0, 0, T - 1) : dg.narrow(0, 1, T - 1);
    const Tensor hp = reverse ? y.narrow(0, 1, T - 1) : y.narrow(0, 0, T - 1);
    out.addmm_(g.reshape({(T - 1) * B, K}).t(), hp.reshape({(T - 1) * B, Ho}));
  }
  // the rows whose previous state is h0: the first processed step of every sequence
  Tensor g0;
  if (!reverse) {
    g0 = dg[0];
  } else if (L.mode == LenMode::kNone) {
    g0 = dg[T - 1];
  } else {
    g0 = at::zeros({B, K}, dg.options());
    for (int64_t b = 0; b < B; ++b)
      if (L.len[b] > 0) g0[b].copy_(dg[L.len[b] - 1][b]);
  }
  out.addmm_(g0.t(), h0);
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> recurrence_bwd(
    c10::string_view mode, const OptTensor& dy, const OptTensor& dh_T, const OptTensor& dc_T,
    const Tensor& xw, const Tensor& w_hh, const OptTensor& b_hh, const Tensor& h0,
    const OptTensor& c0, const OptTensor& lengths, bool reverse, const OptTensor& w_hr,
    const Tensor& y, const Tensor& cs, double clip) {
  const Cell cell = parse_mode(mode);
  const int64_t G = num_gates(cell), S = num_saved(cell);
  const bool lstm = cell == Cell::LSTM;
  const auto dt = y.scalar_type();
  const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t T = y.size(0), B = y.size(1), Ho = y.size(2), GH = w_hh.size(0), H = GH / G;
  const bool proj = w_hr.has_value() && w_hr->defined();
  const bool has_b = b_hh.has_value() && b_hh->defined();
  const bool has_c0 = c0.has_value() && c0->defined();
  auto given = [](const OptTensor& t) { return t.has_value() && t->defined(); };
  auto prep = [&](const Tensor& t) { return t.to(acc).contiguous(); };
  TORCH_CHECK(xw.dim() == 3 && xw.size(0) == T && xw.size(1) == B && xw.size(2) == GH,
              "fusedrnn: xw must have shape [", T, ", ", B, ", ", GH, "], got ", xw.sizes());
  TORCH_CHECK(!lstm || (cs.dim() == 3 && cs.size(2) == H),
              "fusedrnn: cs must have shape [T, B, ", H, "], got ", cs.sizes());
  if (given(dy))
    TORCH_CHECK(dy->sizes() == y.sizes(), "fusedrnn: dy must have shape ", y.sizes(), ", got ",
                dy->sizes());

  BwdArgs a;
  a.dy = given(dy) ? prep(*dy) : Tensor();
  a.xw = prep(xw);
  a.w_hh = prep(w_hh);
  a.h0 = prep(h0);
  a.c0 = has_c0 ? prep(*c0) : Tensor();
  a.w_hr = proj ? prep(*w_hr) : Tensor();
  a.y = prep(y);
  a.cs = cs.contiguous();
  a.L = make_lengths(lengths, T, B);
  a.reverse = reverse;
  a.T = T; a.B = B; a.H = H; a.H_out = Ho;
  TORCH_CHECK(clip >= 0, "fusedrnn: clip must be >= 0 (0 = off), got ", clip);
  a.clip = clip;

  const auto opts = a.w_hh.options();
  BwdOut o;
  o.dxw = alloc({T, B, GH}, opts);
  if (S > 0) {
    // recompute instead of saving the gate activations: one GEMM over all steps (see
    // docs/cpu_backend.md for the measured memory)
    recurrent_preacts(o.dxw, a.y, a.h0, a.w_hh, has_b ? prep(*b_hh) : Tensor(), a.L, reverse);
  }
  o.dhn = cell == Cell::GRU ? alloc({T, B, H}, opts) : Tensor();
  o.dh = given(dh_T) ? dh_T->to(acc, false, true).contiguous() : at::zeros({B, Ho}, opts);
  o.dc = lstm ? (given(dc_T) ? dc_T->to(acc, false, true).contiguous() : at::zeros({B, H}, opts))
              : Tensor();
  o.dhp = proj ? alloc({T, B, Ho}, opts) : Tensor();
  o.r = proj ? alloc({T, B, H}, opts) : Tensor();

  if (acc == at::kDouble)
    backward_dispatch<double>(cell, a, o);
  else
    backward_dispatch<float>(cell, a, o);

  Tensor d_w_hh = alloc({GH, Ho}, opts);
  Tensor d_b_hh = has_b ? alloc({GH}, opts) : at::empty({0}, opts);
  if (cell == Cell::GRU) {
    // r and z blocks share their gradient with dxw; n's recurrent side is dhn
    const Tensor drz = o.dxw.narrow(2, 0, 2 * H);
    weight_grad(d_w_hh.narrow(0, 0, 2 * H), drz, a.y, a.h0, a.L, reverse);
    weight_grad(d_w_hh.narrow(0, 2 * H, H), o.dhn, a.y, a.h0, a.L, reverse);
    if (has_b) {
      Tensor db_rz = d_b_hh.narrow(0, 0, 2 * H), db_n = d_b_hh.narrow(0, 2 * H, H);
      at::sum_out(db_rz, drz, {0, 1});
      at::sum_out(db_n, o.dhn, {0, 1});
    }
  } else {
    weight_grad(d_w_hh, o.dxw, a.y, a.h0, a.L, reverse);
    if (has_b) at::sum_out(d_b_hh, o.dxw, {0, 1});
  }
  Tensor d_w_hr = at::empty({0}, opts);
  if (proj) d_w_hr = at::mm(o.dhp.reshape({T * B, Ho}).t(), o.r.reshape({T * B, H}));
  Tensor dc0 = has_c0 ? o.dc : at::empty({0}, opts);

  if (dt == at::kBFloat16) {
    return {o.dxw.to(dt), d_w_hh.to(dt), d_b_hh.to(dt), o.dh.to(dt), dc0.to(dt), d_w_hr.to(dt)};
  }
  return {o.dxw, d_w_hh, d_b_hh, o.dh, dc0, d_w_hr};
}

}  // namespace cpu
}  // namespace fusedrnn
