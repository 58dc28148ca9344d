// Forward and backward time loops of the CUDA backend (see loop.h): per step one GEMM for the
// recurrent pre-activations (at::addmm into a preallocated buffer) and one pointwise launch.
#include "loop.h"

#include <c10/core/DeviceGuard.h>

#include <atomic>
#include <limits>
#include <string>
#include <vector>

#include "fusedrnn/cell_dispatch.h"
#include "launchers.h"

namespace fusedrnn {
namespace cuda {

namespace {

bool given(const OptTensor& t) { return t.has_value() && t->defined(); }

std::atomic<bool> g_poison{false};

// at::empty, NaN-filled while the test hook is on, so an element a kernel forgets to write shows
// up in the results
Tensor alloc(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  Tensor t = at::empty(sizes, opts);
  if (g_poison.load(std::memory_order_relaxed))
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

Cell parse_mode(c10::string_view mode) {
  Cell cell;
  TORCH_CHECK(cell_from_name(mode.data(), mode.size(), &cell),
              "fusedrnn (cuda): mode must be one of ", cell_name_list(), ", got '",
              std::string(mode), "'");
  return cell;
}


void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "fusedrnn (cuda): launching ", what, " failed: ",
              launch_error_string(err));
}

template <typename S>
void run_fwd_pointwise(Cell cell, const FwdStep<S>& a, cudaStream_t s) {
  const cudaError_t err =
      with_cell(cell, [&](auto c) { return fwd_pointwise<decltype(c)::value, S>(a, s); });
  check_launch(err, "the forward pointwise kernel");
}

template <typename A>
void run_bwd_pointwise(Cell cell, const BwdStep<A>& a, cudaStream_t s) {
  const cudaError_t err =
      with_cell(cell, [&](auto c) { return bwd_pointwise<decltype(c)::value, A>(a, s); });
  check_launch(err, "the backward pointwise kernel");
}

template <typename S>
void run_norm_state_fwd(Cell cell, const NormStateFwdStep<S>& a, cudaStream_t s) {
  const cudaError_t err =
      with_cell(cell, [&](auto c) { return norm_state_fwd<decltype(c)::value, S>(a, s); });
  check_launch(err, "the cell-state normalisation kernel");
}

template <typename A>
void run_norm_state_bwd(Cell cell, const NormStateBwdStep<A>& a, cudaStream_t s) {
  const cudaError_t err =
      with_cell(cell, [&](auto c) { return norm_state_bwd<decltype(c)::value, A>(a, s); });
  check_launch(err, "the cell-state normalisation gradient kernel");
}

template <typename S>
S* ptr(const Tensor& t) {
  return t.defined() && t.numel() ? reinterpret_cast<S*>(t.data_ptr()) : nullptr;
}

at::ScalarType acc_type(at::ScalarType dt) { return dt == at::kDouble ? at::kDouble : at::kFloat; }

void check_tensor(const char* name, const Tensor& t, const Tensor& xw, at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == xw.device(), "fusedrnn (cuda): ", name, " must be on ", xw.device(),
              " like xw, got ", t.device());
  TORCH_CHECK(t.scalar_type() == xw.scalar_type(), "fusedrnn (cuda): ", name,
              " must have dtype ", xw.scalar_type(), " like xw, got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "fusedrnn (cuda): ", name, " must have shape ", shape,
              ", got ", t.sizes());
}

// The op's cell_params checked against the cell (cells.h num_cell_params, cell_param_units):
// count, shape [units * H], xw's device and dtype.
std::vector<Tensor> cell_params_of(Cell cell, const OptTensorList& cell_params, const Tensor& like,
                                   int64_t H) {
  const int n = num_cell_params(cell);
  const int64_t got = cell_params.has_value() ? int64_t(cell_params->size()) : 0;
  TORCH_CHECK(got == n, "fusedrnn (cuda): mode ", kCellNames[int(cell)], " takes ", n,
              " cell_params, got ", got);
  std::vector<Tensor> out;
  for (int k = 0; k < n; ++k) {
    const std::string name = "cell_params[" + std::to_string(k) + "]";
    check_tensor(name.c_str(), (*cell_params)[k], like, {cell_param_units(cell, k) * H});
    out.push_back((*cell_params)[k]);
  }
  return out;
}

// Columns of a (t, b) row of the saved `ln` (launchers.h): the recurrent product's x^ and
// 1/std, then the cell state's.
int64_t ln_width(Cell cell, int64_t H) {
  return (norm_recurrent(cell) ? num_gates(cell) * H + 1 : 0) + (norm_state(cell) ? H + 1 : 0);
}
int64_t ln_state_offset(Cell cell, int64_t H) {
  return norm_recurrent(cell) ? num_gates(cell) * H + 1 : 0;
}

// The reset and zoneout arguments in the arithmetic dtype, or undefined tensors.
Tensor acc_or_undefined(const OptTensor& t, at::ScalarType acc) {
  return given(t) ? t->to(acc).contiguous() : Tensor();
}

// [B, 1] true where the state a forward sequence starts from (h0/c0) is reset: reset[0, b] on
// a row that runs at least one step. The reverse direction never resets its initial state.
Tensor initial_reset(const Tensor& reset, const Tensor& len, bool reverse) {
  if (!reset.defined() || reverse || reset.size(0) == 0) return Tensor();
  Tensor cut = reset[0] != 0;
  if (len.defined()) cut = cut.logical_and(len > 0);
  return cut.unsqueeze(1);
}

template <typename A>
StateCarry<A> state_carry(int64_t T, bool reverse, const Tensor& reset, const Tensor& zo) {
  StateCarry<A> k;
  k.T = T;
  k.reverse = reverse;
  k.reset = ptr<const A>(reset);
  k.zo = ptr<const A>(zo);
  k.Z = zo.defined() ? zo.size(2) : 0;
  return k;
}

// reset [T, B] and zoneout [T, B, Ho (+ H with a cell state)], on `like`'s device and dtype.
void check_reset_zoneout(Cell cell, const OptTensor& reset, const OptTensor& zoneout,
                         const Tensor& like, int64_t T, int64_t B, int64_t H, int64_t Ho) {
  if (given(reset)) check_tensor("reset", *reset, like, {T, B});
  if (given(zoneout))
    check_tensor("zoneout", *zoneout, like, {T, B, Ho + (has_cell_state(cell) ? H : 0)});
}

// Lengths on the tensors' device as int64, or an undefined tensor.
Tensor device_lengths(const OptTensor& lengths, const Tensor& like, int64_t B) {
  if (!given(lengths)) return Tensor();
  TORCH_CHECK(lengths->scalar_type() == at::kLong, "fusedrnn (cuda): lengths must be int64, got ",
              lengths->scalar_type());
  TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == B, "fusedrnn (cuda): lengths must have "
              "shape (", B, ",), got ", lengths->sizes());
  return lengths->to(like.device()).contiguous();
}

template <typename S>
Tensors9 forward_loop(Cell cell, const Tensor& xw_in, const Tensor& w_hh, const OptTensor& b_hh,
                      const Tensor& h0, const OptTensor& c0, const Tensor& len, bool reverse,
                      const OptTensor& w_hr, const OptTensor& reset_in, const OptTensor& zo_in,
                      const std::vector<Tensor>& cp_in, cudaStream_t stream) {
  using A = acc_t<S>;
  const int G = num_gates(cell), NS = num_saved(cell);
  const bool lstm = has_cell_state(cell), proj = given(w_hr);
  const bool nrec = norm_recurrent(cell), nstate = norm_state(cell);
  const int64_t T = xw_in.size(0), B = xw_in.size(1), GH = xw_in.size(2), H = GH / G;
  const int64_t Ho = h0.size(1);
  const auto acc = acc_type(xw_in.scalar_type());
  const auto opts = xw_in.options().dtype(acc);

  const Tensor xw = xw_in.contiguous();
  const Tensor w_hh_t = w_hh.to(acc).t();                        // [H_out, G*H]
  const Tensor bias = given(b_hh) ? b_hh->to(acc) : Tensor();     // [G*H]
  const Tensor w_hr_t = proj ? w_hr->to(acc).t() : Tensor();      // [H, P]
  const Tensor reset = acc_or_undefined(reset_in, acc);           // [T, B]
  const Tensor zo = acc_or_undefined(zo_in, acc);                 // [T, B, Z]
  const bool zoned = zo.defined();
  std::vector<Tensor> cp;                                         // cell_params in A
  for (const Tensor& p : cp_in) cp.push_back(p.to(acc).contiguous());
  Tensor h = h0.to(acc, false, /*copy=*/true).contiguous();       // [B, H_out] state
  Tensor c = lstm ? (given(c0) ? c0->to(acc, false, true).contiguous() : at::zeros({B, H}, opts))
                  : at::empty({0}, opts);                         // [B, H]
  // a segment starting at step 0: the state starts from zeros (later steps: the kernels)
  const Tensor cut0 = initial_reset(reset, len, reverse);        // [B, 1]
  if (cut0.defined()) {
    h.masked_fill_(cut0, 0);
    if (lstm) c.masked_fill_(cut0, 0);
  }
  Tensor y = alloc({T, B, Ho}, xw.options());
  Tensor saved = alloc({NS ? T : 0, B, NS * H}, opts);
  Tensor cs = alloc({lstm ? T : 0, B, H}, opts);
  Tensor hr = alloc({proj || zoned ? T : 0, B, H}, opts);
  Tensor cr = alloc({lstm && zoned ? T : 0, B, H}, opts);
  constexpr bool kKeepHs = !std::is_same<S, A>::value;            // 16-bit storage
  Tensor hs = alloc({kKeepHs ? T : 0, B, Ho}, opts);
  Tensor hh = alloc({B, GH}, opts);                               // W_hh h + b_hh of the step
  Tensor hp = proj ? alloc({B, Ho}, opts) : Tensor();             // projected h of the step
  const int64_t ld = ln_width(cell, H);
  Tensor ln = alloc({ld ? T : 0, B, ld}, opts);                   // LN statistics per row
  Tensor c_new = nstate ? alloc({B, H}, opts) : Tensor();         // the cell's c before its LN

  FwdStep<S> a;
  a.B = B; a.H = H; a.Ho = Ho; a.proj = proj;
  a.k = state_carry<A>(T, reverse, reset, zo);
  a.lengths = ptr<const int64_t>(len);
  a.xw = ptr<const S>(xw);
  a.hh = ptr<const A>(hh);
  a.h = proj ? nullptr : ptr<A>(h);
  a.c = lstm ? ptr<A>(c) : nullptr;
  a.y = proj ? nullptr : ptr<S>(y);
  a.saved = NS ? ptr<A>(saved) : nullptr;
  a.cs = lstm ? ptr<A>(cs) : nullptr;
  a.hr = ptr<A>(hr);
  a.cr = ptr<A>(cr);
  a.hs = proj ? nullptr : ptr<A>(hs);
  a.c_new = nstate ? ptr<A>(c_new) : nullptr;
  NormRecFwdStep<A> nr;
  nr.B = B; nr.N = GH; nr.ld = ld;
  nr.hh = ptr<A>(hh);
  nr.gain = nrec ? ptr<const A>(cp[0]) : nullptr;
  nr.bias = ptr<const A>(bias);
  nr.ln = ptr<A>(ln);
  NormStateFwdStep<S> ns;
  ns.gain = nstate ? ptr<const A>(cp[nrec ? 1 : 0]) : nullptr;
  ns.bias = nstate ? ptr<const A>(cp[nrec ? 2 : 1]) : nullptr;
  ns.ln = ptr<A>(ln);
  ns.ld = ld;
  ns.off = ln_state_offset(cell, H);
  ProjFwdStep<S> p;
  p.B = B; p.P = Ho; p.lengths = a.lengths; p.k = a.k;
  p.hp = proj ? ptr<const A>(hp) : nullptr;
  p.h = ptr<A>(h);
  p.y = ptr<S>(y);
  p.hs = ptr<A>(hs);

  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    // norm_recurrent: b_hh comes after the LN (the row kernel adds it)
    if (bias.defined() && !nrec)
      at::addmm_out(hh, bias, h, w_hh_t);
    else
      at::mm_out(hh, h, w_hh_t);
    if (nrec) {
      nr.t = t;
      check_launch(norm_rec_fwd<A>(nr, stream), "the recurrent normalisation kernel");
    }
    a.t = t;
    run_fwd_pointwise<S>(cell, a, stream);
    if (nstate) {  // h = out(LN(c)), then the step's commit
      ns.a = a;
      run_norm_state_fwd<S>(cell, ns, stream);
    }
    if (proj) {
      at::mm_out(hp, hr[t], w_hr_t);
      p.t = t;
      check_launch(proj_fwd_commit<S>(p, stream), "the projection commit kernel");
    }
  }
  const auto dt = xw.scalar_type();
  return {y, h.to(dt), lstm ? c.to(dt) : at::empty({0}, xw.options()), saved, cs, hr, hs, cr,
          ln};
}

template <typename A>
BwdResult backward_loop(Cell cell, const OptTensor& dy_in, const OptTensor& dh_T,
                       const OptTensor& dc_T, const Tensor& w_hh, const OptTensor& b_hh,
                       const Tensor& h0, const OptTensor& c0, const Tensor& len, bool reverse,
                       const OptTensor& w_hr, double clip, const OptTensor& reset_in,
                       const OptTensor& zo_in, const Tensor& y_in, const Tensor& saved,
                       const Tensor& cs, const Tensor& hr, const Tensor& hs, const Tensor& cr,
                       const Tensor& ln_in, const std::vector<Tensor>& cp_in,
                       cudaStream_t stream) {
  const int G = num_gates(cell);
  const bool lstm = has_cell_state(cell), proj = given(w_hr);
  const bool nrec = norm_recurrent(cell), nstate = norm_state(cell);
  const int64_t T = y_in.size(0), B = y_in.size(1), Ho = y_in.size(2), GH = w_hh.size(0);
  const int64_t H = GH / G;
  const auto dt = y_in.scalar_type();
  const auto acc = acc_type(dt);
  const auto opts = y_in.options().dtype(acc);
  auto prep = [&](const Tensor& t) { return t.to(acc).contiguous(); };

  const Tensor dy = given(dy_in) ? prep(*dy_in) : Tensor();      // [T, B, H_out]
  const Tensor y = hs.numel() ? hs : prep(y_in);                  // [T, B, H_out]
  const Tensor w = prep(w_hh);                                    // [G*H, H_out]
  const Tensor h0a = prep(h0);                                    // [B, H_out]
  const Tensor c0a = given(c0) ? prep(*c0) : Tensor();            // [B, H]
  const Tensor w_hr_a = proj ? prep(*w_hr) : Tensor();            // [P, H]
  const Tensor reset = acc_or_undefined(reset_in, acc);           // [T, B]
  const Tensor zo = acc_or_undefined(zo_in, acc);                 // [T, B, Z]
  std::vector<Tensor> cp;                                         // cell_params in A
  for (const Tensor& p : cp_in) cp.push_back(prep(p));
  const Tensor ln = ln_in.defined() ? ln_in.contiguous() : Tensor();  // [T, B, ld]
  const int64_t ld = ln_width(cell, H);
  Tensor dh = given(dh_T) ? dh_T->to(acc, false, true).contiguous() : at::zeros({B, Ho}, opts);
  Tensor dc = lstm ? (given(dc_T) ? dc_T->to(acc, false, true).contiguous()
                                  : at::zeros({B, H}, opts))
                   : Tensor();
  Tensor dxw = alloc({T, B, GH}, opts);
  // the gradient w.r.t. hh (recurrent side) and, with norm_recurrent, w.r.t. W_hh h_prev (through
  // the LN): the GEMMs read dgh
  Tensor dgn = recurrent_grad_differs(cell) ? alloc({T, B, GH}, opts) : dxw;
  Tensor dgh = nrec ? alloc({T, B, GH}, opts) : dgn;
  Tensor dc_ln = nstate ? alloc({B, H}, opts) : Tensor();         // dL/dc through the state LN
  Tensor dn = nstate ? alloc({T, B, H}, opts) : Tensor();         // dL/dn (state LN output)
  Tensor dg_first = at::zeros({B, GH}, opts);                     // rows whose h_prev is h0
  Tensor dhp = proj ? alloc({T, B, Ho}, opts) : Tensor();         // dL/dh (projected) per step
  Tensor dr = proj ? alloc({B, H}, opts) : Tensor();              // dL/d(o * tanh c) of a step

  BwdStep<A> a;
  a.B = B; a.H = H; a.Ho = Ho; a.clip = A(clip);
  a.k = state_carry<A>(T, reverse, reset, zo);
  a.lengths = ptr<const int64_t>(len);
  a.dy = proj ? nullptr : ptr<const A>(dy);
  a.dr = proj ? ptr<const A>(dr) : nullptr;
  a.dh = ptr<A>(dh);
  a.dc = lstm ? ptr<A>(dc) : nullptr;
  a.saved = ptr<const A>(saved);
  a.y = ptr<const A>(y);
  a.h0 = ptr<const A>(h0a);
  a.cs = lstm ? ptr<const A>(cs) : nullptr;
  a.c0 = ptr<const A>(c0a);
  a.hr = zo.defined() && !proj ? ptr<const A>(hr) : nullptr;
  a.cr = zo.defined() && lstm ? ptr<const A>(cr) : nullptr;
  a.dxw = ptr<A>(dxw);
  a.dgh = ptr<A>(dgn);
  a.dg_first = ptr<A>(dg_first);
  a.dc_ln = nstate ? ptr<const A>(dc_ln) : nullptr;
  NormRecBwdStep<A> nr;
  nr.B = B; nr.N = GH; nr.k = a.k; nr.lengths = a.lengths; nr.ld = ld;
  nr.gain = nrec ? ptr<const A>(cp[0]) : nullptr;
  nr.ln = ptr<const A>(ln);
  nr.dgn = ptr<const A>(dgn);
  nr.dgh = ptr<A>(dgh);
  nr.dg_first = ptr<A>(dg_first);
  NormStateBwdStep<A> ns;
  ns.gain = nstate ? ptr<const A>(cp[nrec ? 1 : 0]) : nullptr;
  ns.ln = ptr<const A>(ln);
  ns.ld = ld;
  ns.off = ln_state_offset(cell, H);
  ns.dc_ln = nstate ? ptr<A>(dc_ln) : nullptr;
  ns.dn = nstate ? ptr<A>(dn) : nullptr;
  ProjBwdStep<A> p;
  p.B = B; p.P = Ho; p.lengths = a.lengths; p.k = a.k;
  p.dy = ptr<const A>(dy);
  p.dh = ptr<A>(dh);
  p.dhp = ptr<A>(dhp);
  ClampStep<A> q;
  q.B = B; q.N = Ho; q.clip = A(clip); q.lengths = a.lengths; q.dh = ptr<A>(dh);

  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = reverse ? T - 1 - s : s;
    if (proj) {
      p.t = t;
      check_launch(proj_bwd_prepare<A>(p, stream), "the projection gradient kernel");
      at::mm_out(dr, dhp[t], w_hr_a);                             // [B, H]
    }
    a.t = t;
    if (nstate) {  // dL/dc through n = LN(c) * gain + bias, before the cell's backward
      ns.a = a;
      run_norm_state_bwd<A>(cell, ns, stream);
    }
    run_bwd_pointwise<A>(cell, a, stream);
    if (nrec) {  // dgn[t] (w.r.t. hh) through the LN into dgh[t] (w.r.t. W_hh h_prev)
      nr.t = t;
      check_launch(norm_rec_bwd<A>(nr, stream), "the recurrent normalisation gradient kernel");
    }
    dh.addmm_(dgh[t], w);                                         // dh_prev += dgh W_hh
    if (clip > 0) {
      q.t = t;
      check_launch(clamp_live_rows<A>(q, stream), "the gradient clamp kernel");
    }
  }

  // the carry into a forward sequence's first step was reset: no gradient reaches h0/c0
  const Tensor cut0 = initial_reset(reset, len, reverse);        // [B, 1]
  if (cut0.defined()) {
    dh.masked_fill_(cut0, 0);
    if (lstm) dc.masked_fill_(cut0, 0);
  }

  // dW_hh = sum over live (t, b) of dgh[t, b]^T h_prev(t, b): one GEMM over the rows whose
  // h_prev is a y row (dead rows have dgh = 0; a reversed sequence's first step meets the zero
  // y row of step len), plus one over the rows that started from h0.
  Tensor d_w_hh = at::zeros({GH, Ho}, opts);
  if (T > 1) {
    const Tensor g = reverse ? dgh.narrow(0, 0, T - 1) : dgh.narrow(0, 1, T - 1);
    Tensor hp = reverse ? y.narrow(0, 1, T - 1) : y.narrow(0, 0, T - 1);
    // h_prev is zeros where the state was reset in between: reset[t] for the pair (t, t - 1)
    // forward, reset[t + 1] for (t, t + 1) reverse; both are reset[1:] in this alignment
    if (reset.defined()) hp = hp.masked_fill((reset.narrow(0, 1, T - 1) != 0).unsqueeze(2), 0);
    d_w_hh.addmm_(g.reshape({(T - 1) * B, GH}).t(), hp.reshape({(T - 1) * B, Ho}));
  }
  d_w_hh.addmm_(dg_first.t(), h0a);
  const auto out_opts = y_in.options();
  // b_hh sits after the LN: its gradient is the one w.r.t. hh
  Tensor d_b_hh = given(b_hh) ? dgn.sum({0, 1}).to(dt) : at::empty({0}, out_opts);
  // the gains' and the state bias's gradients, summed over (t, b) after the loop
  std::vector<Tensor> d_cp;
  if (nrec) d_cp.push_back((dgn * ln.narrow(2, 0, GH)).sum({0, 1}).to(dt));
  if (nstate) {
    const Tensor chat = ln.narrow(2, ln_state_offset(cell, H), H);
    d_cp.push_back((dn * chat).sum({0, 1}).to(dt));
    d_cp.push_back(dn.sum({0, 1}).to(dt));
  }
  Tensor d_w_hr = proj ? at::mm(dhp.reshape({T * B, Ho}).t(), hr.reshape({T * B, H})).to(dt)
                       : at::empty({0}, out_opts);
  Tensor dc0 = given(c0) ? dc.to(dt) : at::empty({0}, out_opts);
  return {dxw.to(dt), d_w_hh.to(dt), d_b_hh, dh.to(dt), dc0, d_w_hr, d_cp};
}

}  // namespace

void set_debug_poison(bool on) { g_poison.store(on); }

Tensors9 recurrence_fwd(c10::string_view mode, const Tensor& xw, const Tensor& w_hh,
                        const OptTensor& b_hh, const Tensor& h0, const OptTensor& c0,
                        const OptTensor& lengths, bool reverse, const OptTensor& w_hr,
                        double grad_clip, const OptTensor& reset, const OptTensor& zoneout,
                        const OptTensorList& cell_params, cudaStream_t stream) {
  (void)grad_clip;  // a backward-only option; in the schema so that autograd sees it
  const Cell cell = parse_mode(mode);
  const int64_t G = num_gates(cell);
  TORCH_CHECK(xw.dim() == 3, "fusedrnn (cuda): xw must be 3-D [T, B, G*H], got shape ",
              xw.sizes());
  const auto dt = xw.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf,
              "fusedrnn (cuda): xw must be float32, float64, bfloat16 or float16, got ", dt);
  const int64_t B = xw.size(1), GH = xw.size(2);
  TORCH_CHECK(GH % G == 0, "fusedrnn (cuda): xw.size(-1) must be a multiple of ", G, " for ",
              std::string(mode), ", got ", GH);
  const int64_t H = GH / G;
  const bool proj = given(w_hr);
  TORCH_CHECK(!proj || supports_projection(cell), "fusedrnn (cuda): w_hr (projection) is only "
              "supported for LSTM, got mode ", std::string(mode));
  TORCH_CHECK(!proj || w_hr->dim() == 2, "fusedrnn (cuda): w_hr must be 2-D [P, ", H, "], got ",
              w_hr->sizes());
  const int64_t Ho = proj ? w_hr->size(0) : H;
  if (proj) check_tensor("w_hr", *w_hr, xw, {Ho, H});
  check_tensor("w_hh", w_hh, xw, {GH, Ho});
  check_tensor("h0", h0, xw, {B, Ho});
  if (given(b_hh)) check_tensor("b_hh", *b_hh, xw, {GH});
  if (given(c0)) {
    TORCH_CHECK(has_cell_state(cell), "fusedrnn (cuda): c0 is only used by LSTM, got mode ",
                std::string(mode));
    check_tensor("c0", *c0, xw, {B, H});
  }
  check_reset_zoneout(cell, reset, zoneout, xw, xw.size(0), B, H, Ho);
  const std::vector<Tensor> cp = cell_params_of(cell, cell_params, xw, H);
  const c10::DeviceGuard guard(xw.device());
  const Tensor len = device_lengths(lengths, xw, B);
  switch (dt) {
    case at::kFloat:
      return forward_loop<float>(cell, xw, w_hh, b_hh, h0, c0, len, reverse, w_hr, reset,
                                 zoneout, cp, stream);
    case at::kDouble:
      return forward_loop<double>(cell, xw, w_hh, b_hh, h0, c0, len, reverse, w_hr, reset,
                                  zoneout, cp, stream);
    case at::kBFloat16:
      return forward_loop<__nv_bfloat16>(cell, xw, w_hh, b_hh, h0, c0, len, reverse, w_hr,
                                         reset, zoneout, cp, stream);
    default:
      return forward_loop<__half>(cell, xw, w_hh, b_hh, h0, c0, len, reverse, w_hr, reset,
                                  zoneout, cp, stream);
  }
}

BwdResult recurrence_bwd(c10::string_view mode, const OptTensor& dy, const OptTensor& dh_T,
                         const OptTensor& dc_T, const Tensor& w_hh, const OptTensor& b_hh,
                         const Tensor& h0, const OptTensor& c0, const OptTensor& lengths,
                         bool reverse, const OptTensor& w_hr, double grad_clip,
                         const OptTensor& reset, const OptTensor& zoneout, const Tensor& y,
                         const Tensor& saved, const Tensor& cs, const Tensor& hr,
                         const Tensor& hs, const Tensor& cr, const OptTensor& ln,
                         const OptTensorList& cell_params, cudaStream_t stream) {
  const Cell cell = parse_mode(mode);
  const int64_t G = num_gates(cell), NS = num_saved(cell);
  TORCH_CHECK(y.dim() == 3, "fusedrnn (cuda): y must be 3-D [T, B, H_out], got ", y.sizes());
  const int64_t T = y.size(0), B = y.size(1), Ho = y.size(2), H = w_hh.size(0) / G;
  TORCH_CHECK(grad_clip >= 0, "fusedrnn (cuda): grad_clip must be >= 0 (0: no clipping), got ",
              grad_clip);
  check_tensor("w_hh", w_hh, y, {G * H, Ho});
  check_tensor("h0", h0, y, {B, Ho});
  if (given(dy)) check_tensor("dy", *dy, y, {T, B, Ho});
  if (given(dh_T)) check_tensor("dh_T", *dh_T, y, {B, Ho});
  if (given(dc_T) && has_cell_state(cell)) check_tensor("dc_T", *dc_T, y, {B, H});
  const auto acc = acc_type(y.scalar_type());
  TORCH_CHECK(saved.scalar_type() == acc && saved.numel() == (NS ? T * B * NS * H : 0),
              "fusedrnn (cuda): saved must be ", acc, " [T, B, ", NS * H, "], got ",
              saved.scalar_type(), " ", saved.sizes());
  TORCH_CHECK(!has_cell_state(cell) || (cs.scalar_type() == acc && cs.numel() == T * B * H),
              "fusedrnn (cuda): cs must be ", acc, " [T, B, ", H, "], got ", cs.sizes());
  check_reset_zoneout(cell, reset, zoneout, y, T, B, H, Ho);
  const bool zoned = given(zoneout);
  TORCH_CHECK(!(given(w_hr) || zoned) || (hr.scalar_type() == acc && hr.numel() == T * B * H),
              "fusedrnn (cuda): hr must be ", acc, " [T, B, ", H, "], got ", hr.sizes());
  TORCH_CHECK(!(zoned && has_cell_state(cell)) ||
                  (cr.scalar_type() == acc && cr.numel() == T * B * H),
              "fusedrnn (cuda): cr must be ", acc, " [T, B, ", H, "], got ", cr.sizes());
  TORCH_CHECK(hs.numel() == 0 || (hs.scalar_type() == acc && hs.sizes() == y.sizes()),
              "fusedrnn (cuda): hs must be empty or ", acc, " ", y.sizes(), ", got ", hs.sizes());
  const std::vector<Tensor> cp = cell_params_of(cell, cell_params, y, H);
  const int64_t ld = ln_width(cell, H);
  const Tensor ln_t = given(ln) ? *ln : Tensor();
  TORCH_CHECK(ld == 0 || (ln_t.defined() && ln_t.scalar_type() == acc &&
                          ln_t.device() == y.device() &&
                          ln_t.sizes() == at::IntArrayRef({T, B, ld})),
              "fusedrnn (cuda): ln must be ", acc, " [", T, ", ", B, ", ", ld, "] for mode ",
              std::string(mode), ", got ", ln_t.defined() ? ln_t.sizes() : at::IntArrayRef{});
  const c10::DeviceGuard guard(y.device());
  const Tensor len = device_lengths(lengths, y, B);
  const OptTensor dc_lstm = has_cell_state(cell) ? dc_T : OptTensor();
  if (acc == at::kDouble)
    return backward_loop<double>(cell, dy, dh_T, dc_lstm, w_hh, b_hh, h0, c0, len, reverse, w_hr,
                                 grad_clip, reset, zoneout, y, saved.contiguous(),
                                 cs.contiguous(), hr.contiguous(), hs.contiguous(),
                                 cr.contiguous(), ln_t, cp, stream);
  return backward_loop<float>(cell, dy, dh_T, dc_lstm, w_hh, b_hh, h0, c0, len, reverse, w_hr,
                              grad_clip, reset, zoneout, y, saved.contiguous(), cs.contiguous(),
                              hr.contiguous(), hs.contiguous(), cr.contiguous(), ln_t, cp,
                              stream);
}

}  // namespace cuda
}  // namespace fusedrnn
