// Backward (BPTT) of the CPU backend: the fused loop of loops_impl.h carries dh (and dc) in
// reverse processing order, one thread per group of rows, recomputing the gate pre-activations
// tile by tile with the forward's micro-kernel; it writes the gate gradients of every step. The
// weight gradients are then GEMMs over all T*B rows.
#include "kernel.h"
#include "recurrence.h"

namespace fusedrnn {
namespace cpu {

namespace {

struct BwdOut {
  Tensor dxw;   // [T, B, G*H]  gate gradients (w.r.t. the pre-activations)
  Tensor dhn;   // [T, B, H]    recurrent-side gradient of the last gate (GRU's n); or undefined
  Tensor dh;    // [B, H_out]   carried dL/dh, ends as dh0
  Tensor dc;    // [B, H]       carried dL/dc (cell-state cells), ends as dc0
  Tensor dhp;   // [T, B, P]    projection: dL/dh per step (for d_w_hr)
  Tensor r;     // [T, B, H]    projection: o * tanh(c) per step (for d_w_hr)
  // row-normalised cells (kernel.h BwdLoop): per step and row, or undefined
  Tensor drec, drec_gain, dstate_gain, dstate_bias;
};

template <typename T>
void backward(Cell cell, const IsaKernels<T>& K, const Tensor& dy, const Tensor& xw,
              const Tensor& w_hh, const Tensor& b_hh, const Tensor& h0, const Tensor& c0,
              const Tensor& w_hr, const Tensor& y, const Tensor& ws, const WsLayout& wl,
              const Lengths& L, bool reverse, double clip, const CarryArgs& carry,
              const std::vector<Tensor>& cp, BwdOut& o) {
  const int G = num_gates(cell);
  const int64_t TT = y.size(0), B = y.size(1), Ho = y.size(2), GH = w_hh.size(0), H = GH / G;
  const bool proj = w_hr.defined();
  const auto opts = y.options();
  auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; };
  // W_hh^T as the forward packs it where activations are recomputed (same tiles, so they are
  // bitwise the forward's), W_hh for dh_prev = dg W_hh, W_hr for dr = dhp W_hr
  Tensor wp;
  // the activations (with zoneout: every cell's outputs) are recomputed
  if ((num_saved(cell) > 0 || carry.zoneout.defined()) && wl.act_off < 0) {
    wp = at::empty({int64_t(K.pack_size(G, H, Ho))}, opts);
    K.pack(G, w_hh.data_ptr<T>(), Ho, /*trans=*/true, H, Ho, wp.data_ptr<T>());
  }
  Tensor wbp = at::empty({int64_t(K.pack_size(1, Ho, GH))}, opts);
  K.pack(1, w_hh.data_ptr<T>(), Ho, /*trans=*/false, Ho, GH, wbp.data_ptr<T>());
  Tensor wrp;
  if (proj) {
    wrp = at::empty({int64_t(K.pack_size(1, H, Ho))}, opts);
    K.pack(1, w_hr.data_ptr<T>(), H, /*trans=*/false, H, Ho, wrp.data_ptr<T>());
  }
  BwdLoop<T> a{TT, B, H, Ho, reverse, L.len.data(), ptr(xw), ptr(b_hh), ptr(y), ptr(dy),
               ptr(h0), ptr(c0), wl.cs_off >= 0 ? ptr(ws) + wl.cs_off : nullptr,
               wl.act_off >= 0 ? ptr(ws) + wl.act_off : nullptr, wl.width, ptr(wp),
               wbp.data_ptr<T>(), ptr(wrp),
               ptr(o.dxw), ptr(o.dhn), ptr(o.dh), ptr(o.dc), ptr(o.dhp), ptr(o.r), T(clip)};
  for (size_t k = 0; k < cp.size(); ++k) a.cell_params[k] = cp[k].data_ptr<T>();
  a.drec = ptr(o.drec);
  a.drec_gain = ptr(o.drec_gain);
  a.dstate_gain = ptr(o.dstate_gain);
  a.dstate_bias = ptr(o.dstate_bias);
  a.reset = ptr(carry.reset);
  a.zo = ptr(carry.zoneout);
  a.zw = carry.zoneout.defined() ? carry.zoneout.size(2) : 0;
  const RowPartition part = partition_rows(L, 2 * GH * Ho + (proj ? H * Ho : 0));
  run_groups(part, [&](int64_t g) {
    const int64_t o0 = part.offsets[g];
    K.bwd(cell, a, RowSet{part.rows.data() + o0, part.offsets[g + 1] - o0});
  });
}

// out [K, H_out] = sum over live (t, b) of dg[t, b]^T h_prev(t, b), as one GEMM over the rows
// whose previous state is a y row, plus one over the rows that started from h0.
//   dg [T, B, K] (a column block of the gate gradients, possibly strided), y [T, B, H_out]
//   keep [T, B, 1] (1 - reset) or undefined: h_prev is zero across a reset. Both directions
//   cross the boundary at step t' >= 1 between the steps t' - 1 and t' (keep[1:]); forward,
//   keep[0] also cuts h0.
void weight_grad(Tensor out, const Tensor& dg, const Tensor& y, const Tensor& h0,
                 const Lengths& L, bool reverse, const Tensor& keep) {
  const int64_t T = dg.size(0), B = dg.size(1), K = dg.size(2), Ho = y.size(2);
  out.zero_();
  if (T == 0 || B == 0) return;
  if (T > 1) {
    // forward: step t >= 1 continues from y[t-1]; reverse: step t < T-1 from y[t+1] (for a
    // sequence's first step t = len-1 that y row is zero, so h0 is added below instead)
    const Tensor g = reverse ? dg.narrow(0, 0, T - 1) : dg.narrow(0, 1, T - 1);
    Tensor hp = reverse ? y.narrow(0, 1, T - 1) : y.narrow(0, 0, T - 1);
    if (keep.defined()) hp = hp * keep.narrow(0, 1, T - 1);
    matmul_rows(g.reshape({(T - 1) * B, K}).t(), hp.reshape({(T - 1) * B, Ho}).t(), Tensor(),
                /*accumulate=*/true, out);
  }
  // the rows whose previous state is h0: the first processed step of every sequence
  Tensor g0;
  if (!reverse) {
    g0 = dg[0];
  } else if (!L.given) {
    g0 = dg[T - 1];
  } else {
    g0 = at::zeros({B, K}, dg.options());
    for (int64_t b = 0; b < B; ++b)
      if (L.len[b] > 0) g0[b].copy_(dg[L.len[b] - 1][b]);
  }
  matmul_rows(g0.t(), (keep.defined() && !reverse ? h0 * keep[0] : h0).t(), Tensor(),
              /*accumulate=*/true, out);
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> recurrence_bwd(
    c10::string_view mode, const OptTensor& dy, const OptTensor& dh_T, const OptTensor& dc_T,
    const Tensor& xw, const Tensor& w_hh, const OptTensor& b_hh, const Tensor& h0,
    const OptTensor& c0, const OptTensor& lengths, bool reverse, const OptTensor& w_hr,
    const Tensor& y, const Tensor& ws, double clip, const OptTensor& reset,
    const OptTensor& zoneout, const OptTensorList& cell_params) {
  const Cell cell = parse_mode(mode);
  const int64_t G = num_gates(cell);
  const bool lstm = has_cell_state(cell);
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
  const CarryArgs carry = carry_args(cell, reset, zoneout, T, B, H, Ho, acc);
  const WsLayout wl = ws_layout(cell, H, /*save=*/true, proj, carry.zoneout.defined());
  TORCH_CHECK(wl.width == 0 || (ws.dim() == 3 && ws.size(0) == T && ws.size(1) == B &&
                                ws.size(2) == wl.width),
              "fusedrnn: ws must be the forward's workspace of shape [", T, ", ", B, ", ",
              wl.width, "] (recurrence_fwd with save=True), got ", ws.sizes());
  if (given(dy))
    TORCH_CHECK(dy->sizes() == y.sizes(), "fusedrnn: dy must have shape ", y.sizes(), ", got ",
                dy->sizes());

  TORCH_CHECK(clip >= 0, "fusedrnn: clip must be >= 0 (0 = off), got ", clip);
  const Tensor dy_c = given(dy) ? prep(*dy) : Tensor(), xw_c = prep(xw), w_c = prep(w_hh),
               b_c = has_b ? prep(*b_hh) : Tensor(), h0_c = prep(h0),
               c0_c = has_c0 ? prep(*c0) : Tensor(), wr_c = proj ? prep(*w_hr) : Tensor(),
               y_c = prep(y), ws_c = ws.contiguous();
  const Lengths L = make_lengths(lengths, T, B);
  const std::vector<Tensor> cp = cell_params_of(cell, cell_params, xw, H, acc);

  const auto opts = w_c.options();
  BwdOut o;
  o.dxw = alloc({T, B, GH}, opts);
  o.dhn = recurrent_grad_differs(cell) ? alloc({T, B, H}, opts) : Tensor();
  o.dh = given(dh_T) ? dh_T->to(acc, false, true).contiguous() : at::zeros({B, Ho}, opts);
  o.dc = lstm ? (given(dc_T) ? dc_T->to(acc, false, true).contiguous() : at::zeros({B, H}, opts))
              : Tensor();
  o.dhp = proj ? alloc({T, B, Ho}, opts) : Tensor();
  o.r = proj ? alloc({T, B, H}, opts) : Tensor();
  if (norm_recurrent(cell)) {
    o.drec = alloc({T, B, GH}, opts);
    o.drec_gain = alloc({T, B, GH}, opts);
  }
  if (norm_state(cell)) {
    o.dstate_gain = alloc({T, B, H}, opts);
    o.dstate_bias = alloc({T, B, H}, opts);
  }

  if (acc == at::kDouble)
    backward<double>(cell, kernels_f64(), dy_c, xw_c, w_c, b_c, h0_c, c0_c, wr_c, y_c, ws_c, wl,
                     L, reverse, clip, carry, cp, o);
  else
    backward<float>(cell, kernels_f32(), dy_c, xw_c, w_c, b_c, h0_c, c0_c, wr_c, y_c, ws_c, wl,
                    L, reverse, clip, carry, cp, o);
  const Tensor keep = carry.reset.defined() ? (1 - carry.reset).unsqueeze(2) : Tensor();

  Tensor d_w_hh = alloc({GH, Ho}, opts);
  Tensor d_b_hh = has_b ? alloc({GH}, opts) : at::empty({0}, opts);
  std::vector<Tensor> d_cp;  // cell_params' gradients, in order (recurrence.h)
  if (o.drec.defined()) d_cp.push_back(o.drec_gain.sum({0, 1}));
  if (o.dstate_gain.defined()) {
    d_cp.push_back(o.dstate_gain.sum({0, 1}));
    d_cp.push_back(o.dstate_bias.sum({0, 1}));
  }
  // W_hh's gradient from the gradient w.r.t. W_hh h_prev: through the LN for row-normalised
  // cells (drec), else the recurrent side of the gate gradients; b_hh's (added after the LN)
  // from the latter
  const bool norm = o.drec.defined();
  if (norm) weight_grad(d_w_hh, o.drec, y_c, h0_c, L, reverse, keep);
  if (o.dhn.defined()) {
    // the first G-1 blocks share their gradient with dxw; the last one's recurrent side is dhn
    const int64_t F = (G - 1) * H;
    const Tensor dfirst = o.dxw.narrow(2, 0, F);
    if (!norm) {
      weight_grad(d_w_hh.narrow(0, 0, F), dfirst, y_c, h0_c, L, reverse, keep);
      weight_grad(d_w_hh.narrow(0, F, H), o.dhn, y_c, h0_c, L, reverse, keep);
    }
    if (has_b) {
      Tensor db_first = d_b_hh.narrow(0, 0, F), db_last = d_b_hh.narrow(0, F, H);
      at::sum_out(db_first, dfirst, {0, 1});
      at::sum_out(db_last, o.dhn, {0, 1});
    }
  } else {
    if (!norm) weight_grad(d_w_hh, o.dxw, y_c, h0_c, L, reverse, keep);
    if (has_b) at::sum_out(d_b_hh, o.dxw, {0, 1});
  }
  Tensor d_w_hr = at::empty({0}, opts);
  if (proj) {
    d_w_hr = alloc({Ho, H}, opts);
    matmul_rows(o.dhp.reshape({T * B, Ho}).t(), o.r.reshape({T * B, H}).t(), Tensor(), false,
                d_w_hr);
  }
  Tensor dc0 = has_c0 ? o.dc : at::empty({0}, opts);

  if (dt == at::kBFloat16) {
    for (auto& d : d_cp) d = d.to(dt);
    return {o.dxw.to(dt), d_w_hh.to(dt), d_b_hh.to(dt), o.dh.to(dt), dc0.to(dt), d_w_hr.to(dt),
            d_cp};
  }
  return {o.dxw, d_w_hh, d_b_hh, o.dh, dc0, d_w_hr, d_cp};
}

}  // namespace cpu
}  // namespace fusedrnn
