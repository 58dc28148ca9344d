// One step of a cell with its input projection, for streaming inference through the nn cells
// (B small, one call per time step): everything in one op so that the per-step cost is two
// GEMVs and one pointwise pass, not a chain of dispatcher calls.
#include "recurrence.h"

namespace fusedrnn {
namespace cpu {

namespace {

template <Cell C, typename T>
void step_loop(const Tensor& gx, const Tensor& gh, const Tensor& h, const Tensor& c, Tensor& h_new,
               Tensor& c_new) {
  using Ops = CellOps<C>;
  constexpr int G = Ops::G;
  constexpr bool kLstm = C == Cell::LSTM;
  const int64_t B = h.size(0), H = h.size(1), GH = G * H;
  const T* gxp = gx.data_ptr<T>();
  const T* ghp = gh.data_ptr<T>();
  const T* hp = h.data_ptr<T>();
  const T* cp = kLstm ? c.data_ptr<T>() : nullptr;
  T* hn = h_new.data_ptr<T>();
  T* cn = kLstm ? c_new.data_ptr<T>() : nullptr;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < H; ++j) {
      T x[G], g[G], saved[Ops::S > 0 ? Ops::S : 1];
      for (int k = 0; k < G; ++k) {
        x[k] = gxp[b * GH + k * H + j];
        g[k] = ghp[b * GH + k * H + j];
      }
      T c_out = kLstm ? cp[b * H + j] : T(0);
      Ops::fwd(x, g, hp[b * H + j], c_out, &hn[b * H + j], &c_out, saved);
      if (kLstm) cn[b * H + j] = c_out;
    }
  }
}

template <typename T>
void step_dispatch(Cell cell, const Tensor& gx, const Tensor& gh, const Tensor& h, const Tensor& c,
                   Tensor& h_new, Tensor& c_new) {
  switch (cell) {
    case Cell::RNN_TANH: return step_loop<Cell::RNN_TANH, T>(gx, gh, h, c, h_new, c_new);
    case Cell::RNN_RELU: return step_loop<Cell::RNN_RELU, T>(gx, gh, h, c, h_new, c_new);
    case Cell::LSTM: return step_loop<Cell::LSTM, T>(gx, gh, h, c, h_new, c_new);
    case Cell::GRU: return step_loop<Cell::GRU, T>(gx, gh, h, c, h_new, c_new);
  }
}

}  // namespace

std::tuple<Tensor, Tensor> cell_step(c10::string_view mode, const Tensor& x, const Tensor& w_ih,
                                     const OptTensor& b_ih, const Tensor& w_hh,
                                     const OptTensor& b_hh, const Tensor& h, const OptTensor& c) {
  const Cell cell = parse_mode(mode);
  const int64_t G = num_gates(cell);
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble,
              "fusedrnn: cell_step supports float32 and float64, got ", dt);
  TORCH_CHECK(x.dim() == 2 && h.dim() == 2 && w_ih.dim() == 2 && w_hh.dim() == 2,
              "fusedrnn: cell_step expects x [B, I], h [B, H], w_ih [G*H, I], w_hh [G*H, H]");
  const int64_t B = x.size(0), H = h.size(1), GH = G * H;
  TORCH_CHECK(h.size(0) == B, "fusedrnn: h must have ", B, " rows like x, got ", h.size(0));
  TORCH_CHECK(w_ih.size(0) == GH && w_ih.size(1) == x.size(1), "fusedrnn: w_ih must have shape [",
              GH, ", ", x.size(1), "], got ", w_ih.sizes());
  TORCH_CHECK(w_hh.size(0) == GH && w_hh.size(1) == H, "fusedrnn: w_hh must have shape [", GH,
              ", ", H, "], got ", w_hh.sizes());
  const bool lstm = cell == Cell::LSTM;
  const bool has_c = c.has_value() && c->defined();
  TORCH_CHECK(has_c == lstm, "fusedrnn: cell_step needs c exactly for LSTM, mode ",
              std::string(mode));
  for (const Tensor* t : {&w_ih, &w_hh, &h}) {
    TORCH_CHECK(t->scalar_type() == dt, "fusedrnn: cell_step arguments must all have dtype ", dt,
                ", got ", t->scalar_type());
  }
  if (has_c)
    TORCH_CHECK(c->sizes() == h.sizes() && c->scalar_type() == dt,
                "fusedrnn: c must have shape ", h.sizes(), " and dtype ", dt, ", got ",
                c->sizes(), " ", c->scalar_type());

  // both projections straight into BLAS: at B = 1 the dispatcher overhead of at::addmm is a
  // large share of the step
  const Tensor xc = x.contiguous(), hc = h.contiguous(), wi = w_ih.contiguous(),
               wh = w_hh.contiguous();
  const Tensor cc = has_c ? c->contiguous() : Tensor();
  Tensor gx = at::empty({B, GH}, x.options()), gh = at::empty({B, GH}, x.options());
  const int64_t I = x.size(1);
  AT_DISPATCH_FLOATING_TYPES(dt, "fusedrnn_cell_step", [&] {
    auto project = [&](Tensor& out, const Tensor& in, const Tensor& w, const OptTensor& bias,
                       int64_t K) {
      scalar_t* o = out.data_ptr<scalar_t>();
      const bool has_bias = bias.has_value() && bias->defined();
      if (has_bias) {
        const Tensor bc = bias->contiguous();
        for (int64_t b = 0; b < B; ++b)
          std::copy(bc.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>() + GH, o + b * GH);
      }
      gemm_rows<scalar_t>(false, true, B, GH, K, in.data_ptr<scalar_t>(), K,
                          w.data_ptr<scalar_t>(), K, has_bias ? scalar_t(1) : scalar_t(0), o, GH);
    };
    project(gx, xc, wi, b_ih, I);   // [B, G*H]
    project(gh, hc, wh, b_hh, H);   // [B, G*H]
  });
  Tensor h_new = alloc({B, H}, h.options());
  Tensor c_new = lstm ? alloc({B, H}, h.options()) : at::empty({0}, h.options());
  if (dt == at::kDouble)
    step_dispatch<double>(cell, gx, gh, hc, cc, h_new, c_new);
  else
    step_dispatch<float>(cell, gx, gh, hc, cc, h_new, c_new);
  return {h_new, c_new};
}

}  // namespace cpu
}  // namespace fusedrnn
