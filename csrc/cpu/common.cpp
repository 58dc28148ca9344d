// Helpers shared by the CPU forward, backward and single-step ops.
#include <atomic>
#include <limits>

#include "recurrence.h"

namespace fusedrnn {
namespace cpu {

namespace {
std::atomic<bool> g_poison{false};
}

Cell parse_mode(c10::string_view mode) {
  if (mode == "RNN_TANH") return Cell::RNN_TANH;
  if (mode == "RNN_RELU") return Cell::RNN_RELU;
  if (mode == "LSTM") return Cell::LSTM;
  if (mode == "GRU") return Cell::GRU;
  TORCH_CHECK(false, "fusedrnn: mode must be one of RNN_TANH, RNN_RELU, LSTM, GRU, got '",
              std::string(mode), "'");
}

void set_debug_poison(bool on) { g_poison.store(on); }
bool debug_poison() { return g_poison.load(std::memory_order_relaxed); }

Tensor alloc(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  Tensor t = at::empty(sizes, opts);
  if (debug_poison()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

Lengths make_lengths(const OptTensor& lengths, int64_t T, int64_t B) {
  Lengths L;
  if (!lengths.has_value() || !lengths->defined()) {
    L.active.assign(T, B);
    return L;
  }
  const Tensor l = lengths->to(at::kCPU).contiguous();
  TORCH_CHECK(l.scalar_type() == at::kLong, "fusedrnn: lengths must be int64, got ",
              l.scalar_type());
  TORCH_CHECK(l.dim() == 1 && l.size(0) == B, "fusedrnn: lengths must have shape (", B,
              ",), got ", l.sizes());
  const int64_t* p = l.data_ptr<int64_t>();
  L.len.resize(B);
  bool sorted = true;
  for (int64_t b = 0; b < B; ++b) {
    // lengths beyond T mean "live at every step", below 0 "never live", as in the reference
    L.len[b] = std::min<int64_t>(std::max<int64_t>(p[b], 0), T);
    if (b > 0 && L.len[b] > L.len[b - 1]) sorted = false;
  }
  L.mode = sorted ? LenMode::kShrink : LenMode::kMask;
  L.active.assign(T, B);
  if (sorted) {
    int64_t nb = B;
    for (int64_t t = 0; t < T; ++t) {
      while (nb > 0 && L.len[nb - 1] <= t) --nb;
      L.active[t] = nb;
    }
  }
  return L;
}

int64_t row_grain(int64_t work_per_row) {
  // below ~64k element-updates per chunk a second thread costs more than it saves: the
  // vectorized cell math is ~1-4 ns per unit, a parallel region's wake-up several us (and far
  // more on a loaded machine; measured with benchmarks/bench_cpu.py on 2 cores)
  constexpr int64_t kMinWork = 65536;
  return std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, work_per_row));
}

}  // namespace cpu
}  // namespace fusedrnn
