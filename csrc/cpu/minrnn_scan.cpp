// The minGRU layer's gates and scan in one pass forward and one pass back, registered as
// fusedrnn::minrnn_fwd / fusedrnn::minrnn_bwd (nn/minrnn.py's linear-space CPU path).
//
// Unfused, the layer ran about 15 elementwise passes over [B, T, H] tensors between its GEMMs
// (a, b, sigmoid, g, their derivatives, masks, the scan's own reads and writes), each with a
// fresh allocation; at T=4096, B=32, H=64 that was more time than the GEMMs. Here the forward
// reads the projected gates once and writes h; the backward reads the gates, h and dh once and
// writes the gates' gradient, which the projection's backward GEMMs consume directly.
//
// Layout: p is [T, B, 2H] (time_major) or [B, T, 2H], contiguous, each row [k_z | k_h]; h and
// dh have p's layout with H channels; h0 is [B, H]; lengths is [B] int64 or absent. A task is one
// batch row and a block of channels over every step (as in scan.cpp), tasks run under
// at::parallel_for. float32 runs the AVX-512 or AVX2 build of minrnn_scan_impl.h when the CPU
// has it (checked at run time); float64 runs the portable build with std::exp.
// Before every include, as in isa_avx512.cpp: "no-trapping-math" lets GCC if-convert the
// selects of the gate math (which sigmoid branch, which g branch), without which the loops do not
// vectorise; it changes no result.
#pragma GCC optimize("no-trapping-math")
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fusedrnn/cells.h"
#include "recurrence.h"  // pooled_empty: outputs from the CPU backend's buffer cache (pool.cpp)

namespace fusedrnn {
namespace minrnn {

#if defined(__x86_64__) && defined(__GNUC__)
#define FUSEDRNN_MINRNN_X86 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")
namespace avx512 {
#include "minrnn_scan_impl.h"
}  // namespace avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "minrnn_scan_impl.h"
}  // namespace avx2
#pragma GCC pop_options
#endif
namespace base {
#include "minrnn_scan_impl.h"
}  // namespace base

namespace {

constexpr int64_t kMinBlock = 16;   // channels per task at least: one 64-byte line of float32
constexpr int64_t kMaxBlock = 512;  // and at most: a task's state stays in L1/L2
constexpr int64_t kMinWork = 1 << 16;  // elements per thread below which waking threads costs more

enum class Isa { base, avx2, avx512 };

Isa isa() {
#ifdef FUSEDRNN_MINRNN_X86
  static const Isa best = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
                              ? Isa::avx512
                              : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                                     ? Isa::avx2
                                     : Isa::base);
  return best;
#else
  return Isa::base;
#endif
}

// Runs fn(b0, b1, d0, nd, state) over tasks of rows x channel blocks in parallel. Batch first:
// one row per task (its steps are adjacent in memory). Time major: blocks of adjacent rows over
// all H channels, so that each step of a task is one contiguous read (see the impl header).
template <typename T, typename Fn>
void for_tasks(int64_t B, int64_t T_, int64_t H, bool time_major, const Fn& fn) {
  if (B * H == 0) return;
  const int64_t threads = static_cast<int64_t>(at::get_num_threads());
  const int64_t want = 4 * threads;
  int64_t block = std::min(kMaxBlock, (H + kMinBlock - 1) / kMinBlock * kMinBlock);
  int64_t rows = 1;
  if (time_major) {  // one row block per thread (fewer when B is small); all channels
    rows = std::max<int64_t>(1, (B + threads - 1) / threads);
    while (rows > 1 && ((B + rows - 1) / rows) * ((H + block - 1) / block) < threads) rows /= 2;
  } else {
    while (block > kMinBlock && B * ((H + block - 1) / block) < want)
      block = std::max(kMinBlock, (block / 2 + kMinBlock - 1) / kMinBlock * kMinBlock);
  }
  const int64_t nblk = (H + block - 1) / block, nrow = (B + rows - 1) / rows;
  const int64_t grain =
      std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, T_ * block * rows));
  at::parallel_for(0, nrow * nblk, grain, [&](int64_t lo, int64_t hi) {
    std::vector<T> state((rows + 1) * block);  // + a row of scratch
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b0 = (i / nblk) * rows, d0 = (i % nblk) * block;
      fn(b0, std::min(B, b0 + rows), d0, std::min(block, H - d0), state.data());
    }
  });
}

// Calls fn(std::integral_constant<int, G>) for the cell's gate count: the kernels are
// templates on it, so minGRU's inner loop carries none of minLSTM's work.
template <typename Fn>
void with_gates(int64_t G, const Fn& fn) {
  if (G == 2)
    fn(std::integral_constant<int, 2>{});
  else
    fn(std::integral_constant<int, 3>{});
}

void check(const at::Tensor& p, const c10::optional<at::Tensor>& bias,
           const c10::optional<at::Tensor>& h0,
           const c10::optional<at::Tensor>& lengths, bool time_major, int64_t cell,
           const c10::optional<at::Tensor>& reset) {
  TORCH_CHECK(cell == 0 || cell == 1, "minrnn: cell must be 0 (minGRU) or 1 (minLSTM), got ", cell);
  const int64_t G = cell + 2;  // gate blocks per row
  TORCH_CHECK(p.dim() == 3 && p.size(2) % G == 0, "minrnn: p must be [T, B, ", G,
              "H] or [B, T, ", G, "H], got ", p.sizes());
  TORCH_CHECK(p.device().is_cpu(), "minrnn: expected CPU tensors");
  TORCH_CHECK(p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble,
              "minrnn: p must be float32 or float64, got ", p.scalar_type());
  const int64_t B = time_major ? p.size(1) : p.size(0), H = p.size(2) / G;
  if (h0.has_value())
    TORCH_CHECK(h0->dim() == 2 && h0->size(0) == B && h0->size(1) == H &&
                    h0->scalar_type() == p.scalar_type(),
                "minrnn: h0 must be [", B, ", ", H, "] of dtype ", p.scalar_type(), ", got ",
                h0->sizes(), " ", h0->scalar_type());
  if (bias.has_value())
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == G * H && bias->scalar_type() == p.scalar_type(),
                "minrnn: bias must be [", G * H, "] of dtype ", p.scalar_type(), ", got ",
                bias->sizes(), " ", bias->scalar_type());
  if (lengths.has_value())
    TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == B &&
                    lengths->scalar_type() == at::kLong && lengths->device().is_cpu(),
                "minrnn: lengths must be a CPU int64 tensor of shape [", B, "]");
  if (reset.has_value()) {
    const int64_t T_ = time_major ? p.size(0) : p.size(1);
    TORCH_CHECK(reset->dim() == 2 && reset->size(0) == (time_major ? T_ : B) &&
                    reset->size(1) == (time_major ? B : T_) &&
                    reset->scalar_type() == at::kBool && reset->device().is_cpu(),
                "minrnn: reset must be a CPU bool tensor of shape ",
                time_major ? "[T, B] = [" : "[B, T] = [", time_major ? T_ : B, ", ",
                time_major ? B : T_, "], got ", reset->sizes(), " ", reset->scalar_type());
  }
}

base::Geo geo(const at::Tensor& p, bool reverse, bool time_major, int64_t G) {
  return {time_major ? p.size(0) : p.size(1), time_major ? p.size(1) : p.size(0), p.size(2) / G,
          reverse, time_major};
}

template <typename Geo>
Geo as(const base::Geo& g) {
  return {g.T, g.B, g.H, g.reverse, g.time_major};
}

std::tuple<at::Tensor, at::Tensor> minrnn_fwd(const at::Tensor& p_in,
                                              const c10::optional<at::Tensor>& bias_in,
                                              const c10::optional<at::Tensor>& h0_in,
                                              const c10::optional<at::Tensor>& len_in,
                                              bool reverse, bool time_major, int64_t cell,
                                              const c10::optional<at::Tensor>& reset_in) {
  check(p_in, bias_in, h0_in, len_in, time_major, cell, reset_in);
  const at::Tensor p = p_in.contiguous();
  const int64_t G = cell + 2;
  const base::Geo g = geo(p, reverse, time_major, G);
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::zeros({G * g.H}, p.options());
  const at::Tensor h0 = h0_in.has_value() ? h0_in->contiguous() : at::Tensor();
  const at::Tensor len = len_in.has_value() ? len_in->contiguous() : at::Tensor();
  at::Tensor h = cpu::pooled_empty({p.size(0), p.size(1), g.H}, p.options());
  at::Tensor hn = h0.defined() ? h0.clone() : at::zeros({g.B, g.H}, p.options());
  const int64_t* lp = len.defined() ? len.data_ptr<int64_t>() : nullptr;
  const at::Tensor rst = reset_in.has_value() ? reset_in->contiguous() : at::Tensor();
  const bool* rp = rst.defined() ? rst.data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "minrnn_fwd", [&] {
    const scalar_t *pp = p.data_ptr<scalar_t>(), *bp = bias.data_ptr<scalar_t>();
    const scalar_t* h0p = h0.defined() ? h0.data_ptr<scalar_t>() : nullptr;
    scalar_t *hp = h.data_ptr<scalar_t>(), *hnp = hn.data_ptr<scalar_t>();
    const Isa which = std::is_same<scalar_t, float>::value ? isa() : Isa::base;
    with_gates(G, [&](auto gates) {
    constexpr int NG = decltype(gates)::value;
    for_tasks<scalar_t>(g.B, g.T, g.H, g.time_major,
                        [&](int64_t b0, int64_t b1, int64_t d0, int64_t nd, scalar_t* s) {
#ifdef FUSEDRNN_MINRNN_X86
      if (which == Isa::avx512)
        return avx512::gru_fwd_task<NG>(as<avx512::Geo>(g), pp, bp, h0p, lp, rp, hp, hnp, b0, b1, d0, nd, s);
      if (which == Isa::avx2)
        return avx2::gru_fwd_task<NG>(as<avx2::Geo>(g), pp, bp, h0p, lp, rp, hp, hnp, b0, b1, d0, nd, s);
#endif
      base::gru_fwd_task<NG>(g, pp, bp, h0p, lp, rp, hp, hnp, b0, b1, d0, nd, s);
    });
    });
  });
  return {h, hn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> minrnn_bwd(
    const at::Tensor& p_in, const c10::optional<at::Tensor>& bias_in, const at::Tensor& h_in,
    const c10::optional<at::Tensor>& h0_in, const c10::optional<at::Tensor>& len_in,
    const c10::optional<at::Tensor>& grad_in, const c10::optional<at::Tensor>& grad_hn_in,
    bool reverse, bool time_major, int64_t cell, const c10::optional<at::Tensor>& reset_in) {
  check(p_in, bias_in, h0_in, len_in, time_major, cell, reset_in);
  const at::Tensor p = p_in.contiguous();
  const int64_t G = cell + 2;
  const base::Geo g = geo(p, reverse, time_major, G);
  TORCH_CHECK(h_in.sizes() == at::IntArrayRef({p.size(0), p.size(1), g.H}),
              "minrnn_bwd: h must be p's shape with H channels, got ", h_in.sizes());
  TORCH_CHECK(!grad_in.has_value() || grad_in->sizes() == h_in.sizes(),
              "minrnn_bwd: grad_h must have h's shape ", h_in.sizes());
  TORCH_CHECK(!grad_hn_in.has_value() || grad_hn_in->sizes() == at::IntArrayRef({g.B, g.H}),
              "minrnn_bwd: grad_hn must be [", g.B, ", ", g.H, "]");
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::zeros({G * g.H}, p.options());
  const at::Tensor h = h_in.contiguous();
  // an absent grad_h (only h_n used) is zeros; a broadcast one (y.sum()) is materialised once
  const at::Tensor gh = grad_in.has_value() ? grad_in->to(p.scalar_type())
                                            : at::zeros({1, 1, 1}, p.options()).expand(h.sizes());
  // strides of grad_h in (time, row, channel) order, whatever its layout
  const int64_t gs[3] = {gh.stride(time_major ? 0 : 1), gh.stride(time_major ? 1 : 0), gh.stride(2)};
  const at::Tensor ghn = grad_hn_in.has_value() ? grad_hn_in->to(p.scalar_type()).contiguous()
                                                : at::Tensor();
  const at::Tensor h0 = h0_in.has_value() ? h0_in->contiguous() : at::Tensor();
  const at::Tensor len = len_in.has_value() ? len_in->contiguous() : at::Tensor();
  at::Tensor dp = cpu::pooled_empty(p.sizes(), p.options());
  at::Tensor dh0 = at::empty({g.B, g.H}, p.options());
  at::Tensor dbias_rows = at::zeros({g.B, G * g.H}, p.options());
  const at::Tensor zero = at::zeros({g.H}, p.options());
  const int64_t* lp = len.defined() ? len.data_ptr<int64_t>() : nullptr;
  const at::Tensor rst = reset_in.has_value() ? reset_in->contiguous() : at::Tensor();
  const bool* rp = rst.defined() ? rst.data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "minrnn_bwd", [&] {
    const scalar_t *pp = p.data_ptr<scalar_t>(), *bp = bias.data_ptr<scalar_t>();
    const scalar_t *hp = h.data_ptr<scalar_t>(), *zp = zero.data_ptr<scalar_t>();
    const scalar_t* h0p = h0.defined() ? h0.data_ptr<scalar_t>() : nullptr;
    const scalar_t* ghp = gh.data_ptr<scalar_t>();
    const scalar_t* ghnp = ghn.defined() ? ghn.data_ptr<scalar_t>() : nullptr;
    scalar_t *dpp = dp.data_ptr<scalar_t>(), *dh0p = dh0.data_ptr<scalar_t>();
    scalar_t* dbr = dbias_rows.data_ptr<scalar_t>();
    const Isa which = std::is_same<scalar_t, float>::value ? isa() : Isa::base;
    with_gates(G, [&](auto gates) {
    constexpr int NG = decltype(gates)::value;
    for_tasks<scalar_t>(g.B, g.T, g.H, g.time_major,
                        [&](int64_t b0, int64_t b1, int64_t d0, int64_t nd, scalar_t* c) {
      scalar_t* gbuf = c + (b1 - b0) * nd;  // for_tasks' state has room for one more row
#ifdef FUSEDRNN_MINRNN_X86
      if (which == Isa::avx512)
        return avx512::gru_bwd_task<NG>(as<avx512::Geo>(g), pp, bp, hp, h0p, lp, rp, ghp, gs, ghnp, zp,
                                    dpp, dh0p, dbr, b0, b1, d0, nd, c, gbuf);
      if (which == Isa::avx2)
        return avx2::gru_bwd_task<NG>(as<avx2::Geo>(g), pp, bp, hp, h0p, lp, rp, ghp, gs, ghnp, zp, dpp,
                                  dh0p, dbr, b0, b1, d0, nd, c, gbuf);
#endif
      base::gru_bwd_task<NG>(g, pp, bp, hp, h0p, lp, rp, ghp, gs, ghnp, zp, dpp, dh0p, dbr, b0, b1, d0, nd,
                         c, gbuf);
    });
    });
  });
  // rows summed in a fixed order: dbias does not depend on the number of threads
  return {dp, dh0, dbias_rows.sum(0)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fusedrnn, m) {
  m.def("minrnn_fwd(Tensor p, Tensor? bias, Tensor? h0, Tensor? lengths, bool reverse, "
        "bool time_major, int cell, Tensor? reset=None) -> (Tensor, Tensor)");
  m.def("minrnn_bwd(Tensor p, Tensor? bias, Tensor h, Tensor? h0, Tensor? lengths, "
        "Tensor? grad_h, Tensor? grad_hn, bool reverse, bool time_major, int cell, "
        "Tensor? reset=None) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("minrnn_fwd", &minrnn_fwd);
  m.impl("minrnn_bwd", &minrnn_bwd);
}

}  // namespace minrnn
}  // namespace fusedrnn
