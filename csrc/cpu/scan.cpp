// First-order linear scans on CPU: h_t = a_t * h_{t-1} + b_t, its log-space form and their
// backward passes, registered as fusedrnn::scan_fwd / fusedrnn::scan_bwd.
//
// Layout: a, b, h are [B, T, D] contiguous (channels innermost), h0 is [B, D]. One task is one
// batch row and a block of adjacent channels (all D of them when B alone feeds the threads), so
// every step reads one contiguous run of channels, the inner loop vectorises and a task streams
// through memory nearly linearly. Tasks run in parallel with at::parallel_for. When
// B * D alone gives too few tasks for the threads (small batch, long T), time is cut into chunks:
// each chunk first folds its steps into an aggregate (A, S) with "s_out = A (x) s_in (+) S", then
// every chunk composes the aggregates before it into its carry-in and reruns its steps, writing.
// Accumulation is in at::opmath_type (float for bf16/fp16/float, double for double).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "recurrence.h"  // pooled_empty: outputs from the CPU backend's buffer cache (pool.cpp)

namespace fusedrnn {
namespace scan {
using cpu::pooled_empty;
namespace {

constexpr int64_t kMinBlock = 16;   // channels per task at least: one 64-byte line of float32
constexpr int64_t kMaxBlock = 512;  // and at most: the carried state lives on the stack
constexpr int64_t kMinChunk = 256; // below this many steps a chunk costs more than it saves
constexpr int64_t kMinWork = 1 << 16;  // elements per thread below which waking threads costs more

template <typename T>
inline T neg_inf() { return -std::numeric_limits<T>::infinity(); }

template <typename T>
inline T logaddexp(T x, T y) {
  const T m = std::max(x, y);
  if (m == neg_inf<T>()) return m;  // both -inf: exp(-inf - -inf) would be NaN
  return m + std::log1p(std::exp(std::min(x, y) - m));
}

// Geometry of one scan: the processing step k touches time t(k); `reverse` runs t = T-1 .. 0.
struct Geo {
  int64_t B, T, D;
  bool reverse;
  int64_t time(int64_t k) const { return reverse ? T - 1 - k : k; }
  int64_t at(int64_t b, int64_t t, int64_t d) const { return (b * T + t) * D + d; }
};

// Forward: s_k = a_t * s_{k-1} + b_t (LOG: s_k = logaddexp(a_t + s_{k-1}, b_t)), h_t = s_k.
template <typename scalar_t, bool LOG>
struct Forward {
  using acc_t = at::opmath_type<scalar_t>;
  Geo g;
  const scalar_t *a, *b, *h0;  // h0 may be null: zero state (LOG: -inf)
  scalar_t* h;

  static acc_t coef_identity() { return LOG ? acc_t(0) : acc_t(1); }
  static acc_t state_identity() { return LOG ? neg_inf<acc_t>() : acc_t(0); }

  void init(int64_t bi, int64_t d0, int64_t nd, acc_t* s) const {
    for (int64_t j = 0; j < nd; ++j)
      s[j] = h0 ? static_cast<acc_t>(h0[bi * g.D + d0 + j]) : state_identity();
  }
  // s = A (x) s (+) S: the aggregate of a chunk applied to the carry entering it
  static void apply(const acc_t* A, const acc_t* S, acc_t* s, int64_t nd) {
    for (int64_t j = 0; j < nd; ++j)
      s[j] = LOG ? logaddexp(A[j] + s[j], S[j]) : A[j] * s[j] + S[j];
  }
  template <bool WRITE, bool TRACK>
  void steps(int64_t bi, int64_t k0, int64_t k1, int64_t d0, int64_t nd, acc_t* s, acc_t* A) const {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t o = g.at(bi, g.time(k), d0);
      const scalar_t* ap = a + o;
      const scalar_t* bp = b + o;
      scalar_t* hp = h + o;
#pragma omp simd
      for (int64_t j = 0; j < nd; ++j) {
        const acc_t av = static_cast<acc_t>(ap[j]);
        const acc_t bv = static_cast<acc_t>(bp[j]);
        s[j] = LOG ? logaddexp(av + s[j], bv) : av * s[j] + bv;
        if (TRACK) A[j] = LOG ? A[j] + av : A[j] * av;
        if (WRITE) hp[j] = static_cast<scalar_t>(s[j]);
      }
    }
  }
  void finish(int64_t, int64_t, int64_t, const acc_t*) const {}
};

// Backward: the gradient flows against the forward order. With w_t = dh_t/dh_{prev(t)}
// (a_t, or exp(log_a_t + log_h_prev - log_h_t) in log space) the carry c = w_t * g_t obeys
// g_t = grad_h_t + c_{next}, c_t = w_t * g_t: a linear scan in the reverse order, coefficient w.
//   da_t = g_t * h_prev (LOG: g_t * w_t), db_t = g_t (LOG: g_t * exp(log_b_t - log_h_t)),
//   dh0 = the carry after the last step = w_first * g_first.
template <typename scalar_t, bool LOG>
struct Backward {
  using acc_t = at::opmath_type<scalar_t>;
  Geo g;         // g.reverse is the opposite of the forward's: we walk the forward backwards
  bool fwd_rev;  // the forward's direction: h_prev(t) = h[t - 1] or h[t + 1]
  const scalar_t *a, *b, *h, *h0, *gh;
  scalar_t *da, *db, *dh0;
  const scalar_t* none_row;  // [D] the state before the first step when h0 is absent (0 or -inf)

  static acc_t coef_identity() { return acc_t(1); }
  static acc_t state_identity() { return acc_t(0); }
  void init(int64_t, int64_t, int64_t nd, acc_t* s) const {
    for (int64_t j = 0; j < nd; ++j) s[j] = acc_t(0);
  }
  static void apply(const acc_t* A, const acc_t* S, acc_t* s, int64_t nd) {
    for (int64_t j = 0; j < nd; ++j) s[j] = A[j] * s[j] + S[j];
  }
  template <bool WRITE, bool TRACK>
  void steps(int64_t bi, int64_t k0, int64_t k1, int64_t d0, int64_t nd, acc_t* s, acc_t* A) const {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t t = g.time(k);
      const bool first = fwd_rev ? t == g.T - 1 : t == 0;
      const int64_t o = g.at(bi, t, d0);
      const scalar_t* prev = !first ? h + g.at(bi, fwd_rev ? t + 1 : t - 1, d0)
                                    : (h0 ? h0 + bi * g.D + d0 : none_row + d0);
#pragma omp simd
      for (int64_t j = 0; j < nd; ++j) {
        const acc_t gv = static_cast<acc_t>(gh[o + j]) + s[j];
        const acc_t hp = static_cast<acc_t>(prev[j]);
        const acc_t av = static_cast<acc_t>(a[o + j]);
        acc_t w, dav, dbv;
        if (LOG) {
          const acc_t ht = static_cast<acc_t>(h[o + j]);
          const bool dead = ht == neg_inf<acc_t>();  // h_t = 0 exactly: no gradient reaches it
          w = dead ? acc_t(0) : std::exp(av + hp - ht);
          dav = gv * w;
          dbv = dead ? acc_t(0) : gv * std::exp(static_cast<acc_t>(b[o + j]) - ht);
        } else {
          w = av;
          dav = gv * hp;
          dbv = gv;
        }
        s[j] = w * gv;
        if (TRACK) A[j] *= w;
        if (WRITE) {
          da[o + j] = static_cast<scalar_t>(dav);
          db[o + j] = static_cast<scalar_t>(dbv);
        }
      }
    }
  }
  void finish(int64_t bi, int64_t d0, int64_t nd, const acc_t* s) const {
    for (int64_t j = 0; j < nd; ++j) dh0[bi * g.D + d0 + j] = static_cast<scalar_t>(s[j]);
  }
};

// Runs kernel K over every (batch row, channel block, time chunk); see the file comment.
template <typename K>
void run_scan(const K& kern, const Geo& g) {
  using acc_t = typename K::acc_t;
  if (g.B * g.D == 0) return;
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  // the widest channel block (a multiple of kMinBlock) that still gives `want` tasks
  int64_t block = std::min(kMaxBlock, (g.D + kMinBlock - 1) / kMinBlock * kMinBlock);
  while (block > kMinBlock && g.B * ((g.D + block - 1) / block) < want)
    block = std::max(kMinBlock, (block / 2 + kMinBlock - 1) / kMinBlock * kMinBlock);
  const int64_t nblk = (g.D + block - 1) / block;
  const int64_t tasks = g.B * nblk;
  int64_t nchunk = 1;
  if (tasks < want && g.B * g.D * g.T >= 2 * kMinWork) nchunk = std::max<int64_t>(1, std::min((want + tasks - 1) / tasks, g.T / kMinChunk));
  const int64_t clen = (g.T + nchunk - 1) / nchunk;
  nchunk = g.T == 0 ? 1 : (g.T + clen - 1) / clen;

  // small problems stay on the calling thread: a parallel region's wake-up costs far more than
  // the work (on a busy machine, a scheduler time slice)
  const int64_t grain = std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, clen * block));
  if (nchunk == 1) {
    at::parallel_for(0, tasks, grain, [&](int64_t lo, int64_t hi) {
      acc_t s[kMaxBlock];
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t bi = i / nblk, d0 = (i % nblk) * block, nd = std::min(block, g.D - d0);
        kern.init(bi, d0, nd, s);
        kern.template steps<true, false>(bi, 0, g.T, d0, nd, s, nullptr);
        kern.finish(bi, d0, nd, s);
      }
    });
    return;
  }
  // Phase 1: the aggregate (A, S) of every chunk but the last, from the identity state.
  std::vector<acc_t> agg_a(tasks * nchunk * block), agg_s(tasks * nchunk * block);
  at::parallel_for(0, tasks * (nchunk - 1), grain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t task = i / (nchunk - 1), c = i % (nchunk - 1);
      const int64_t bi = task / nblk, d0 = (task % nblk) * block, nd = std::min(block, g.D - d0);
      acc_t* A = &agg_a[(task * nchunk + c) * block];
      acc_t* S = &agg_s[(task * nchunk + c) * block];
      for (int64_t j = 0; j < nd; ++j) { A[j] = K::coef_identity(); }
      // from the identity state (forward: 0 or -inf, backward: 0), not from h0
      for (int64_t j = 0; j < nd; ++j) { S[j] = K::state_identity(); }
      kern.template steps<false, true>(bi, c * clen, std::min(g.T, (c + 1) * clen), d0, nd, S, A);
    }
  });
  // Phase 2: each chunk composes the aggregates before it into its carry-in, then writes.
  at::parallel_for(0, tasks * nchunk, grain, [&](int64_t lo, int64_t hi) {
    acc_t s[kMaxBlock];
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t task = i / nchunk, c = i % nchunk;
      const int64_t bi = task / nblk, d0 = (task % nblk) * block, nd = std::min(block, g.D - d0);
      kern.init(bi, d0, nd, s);
      for (int64_t p = 0; p < c; ++p)
        K::apply(&agg_a[(task * nchunk + p) * block], &agg_s[(task * nchunk + p) * block], s, nd);
      kern.template steps<true, false>(bi, c * clen, std::min(g.T, (c + 1) * clen), d0, nd, s, nullptr);
      if (c == nchunk - 1) kern.finish(bi, d0, nd, s);
    }
  });
}

void check_inputs(const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& h0) {
  TORCH_CHECK(a.dim() == 3, "scan: a must be 3-D [B, T, D], got shape ", a.sizes());
  TORCH_CHECK(b.sizes() == a.sizes(), "scan: b must have the shape of a ", a.sizes(), ", got ", b.sizes());
  TORCH_CHECK(b.scalar_type() == a.scalar_type(), "scan: b must have dtype ", a.scalar_type(),
              " like a, got ", b.scalar_type());
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "scan: expected CPU tensors");
  if (h0.has_value()) {
    TORCH_CHECK(h0->dim() == 2 && h0->size(0) == a.size(0) && h0->size(1) == a.size(2),
                "scan: h0 must have shape [", a.size(0), ", ", a.size(2), "], got ", h0->sizes());
    TORCH_CHECK(h0->scalar_type() == a.scalar_type(), "scan: h0 must have dtype ", a.scalar_type(),
                ", got ", h0->scalar_type());
  }
}

at::Tensor scan_fwd(const at::Tensor& a_in, const at::Tensor& b_in, const c10::optional<at::Tensor>& h0_in,
                    bool reverse, bool log_space) {
  check_inputs(a_in, b_in, h0_in);
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const at::Tensor h0 = h0_in.has_value() ? h0_in->contiguous() : at::Tensor();
  at::Tensor h = pooled_empty(a.sizes(), a.options());
  const Geo g{a.size(0), a.size(1), a.size(2), reverse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "scan_fwd", [&] {
    const scalar_t* h0p = h0.defined() ? h0.data_ptr<scalar_t>() : nullptr;
    if (log_space)
      run_scan(Forward<scalar_t, true>{g, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), h0p,
                                       h.data_ptr<scalar_t>()}, g);
    else
      run_scan(Forward<scalar_t, false>{g, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), h0p,
                                        h.data_ptr<scalar_t>()}, g);
  });
  return h;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_bwd(
    const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& h_in,
    const c10::optional<at::Tensor>& h0_in, const at::Tensor& grad_in, bool reverse, bool log_space) {
  check_inputs(a_in, b_in, h0_in);
  TORCH_CHECK(h_in.sizes() == a_in.sizes() && grad_in.sizes() == a_in.sizes(),
              "scan_bwd: h and grad_h must have the shape of a ", a_in.sizes());
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous(), h = h_in.contiguous();
  const at::Tensor gh = grad_in.to(a.scalar_type()).contiguous();
  const at::Tensor h0 = h0_in.has_value() ? h0_in->contiguous() : at::Tensor();
  at::Tensor da = pooled_empty(a.sizes(), a.options());
  at::Tensor db = pooled_empty(a.sizes(), a.options());
  at::Tensor dh0 = at::empty({a.size(0), a.size(2)}, a.options());
  const Geo g{a.size(0), a.size(1), a.size(2), !reverse};
  const at::Tensor none_row = at::full({a.size(2)}, log_space ? -INFINITY : 0.0, a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "scan_bwd", [&] {
    const scalar_t* h0p = h0.defined() ? h0.data_ptr<scalar_t>() : nullptr;
    const scalar_t* none = none_row.data_ptr<scalar_t>();
    auto go = [&](auto kern) { run_scan(kern, g); };
    if (log_space)
      go(Backward<scalar_t, true>{g, reverse, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                                  h.data_ptr<scalar_t>(), h0p, gh.data_ptr<scalar_t>(),
                                  da.data_ptr<scalar_t>(), db.data_ptr<scalar_t>(), dh0.data_ptr<scalar_t>(), none});
    else
      go(Backward<scalar_t, false>{g, reverse, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                                   h.data_ptr<scalar_t>(), h0p, gh.data_ptr<scalar_t>(),
                                   da.data_ptr<scalar_t>(), db.data_ptr<scalar_t>(), dh0.data_ptr<scalar_t>(), none});
  });
  return {da, db, dh0};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fusedrnn, m) {
  m.def("scan_fwd(Tensor a, Tensor b, Tensor? h0, bool reverse, bool log_space) -> Tensor");
  m.def("scan_bwd(Tensor a, Tensor b, Tensor h, Tensor? h0, Tensor grad_h, bool reverse, "
        "bool log_space) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("scan_fwd", &scan_fwd);
  m.impl("scan_bwd", &scan_bwd);
}

}  // namespace scan
}  // namespace fusedrnn
