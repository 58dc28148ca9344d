// Helpers shared by the CPU forward, backward and single-step ops.
#include <algorithm>
#include <atomic>
#include <limits>
#include <numeric>

#include "fusedrnn/cell_dispatch.h"
#include "recurrence.h"

namespace fusedrnn {
namespace cpu {

namespace {
std::atomic<bool> g_poison{false};
}

Cell parse_mode(c10::string_view mode) {
  Cell cell;
  TORCH_CHECK(cell_from_name(mode.data(), mode.size(), &cell), "fusedrnn: mode must be one of ",
              cell_name_list(), ", got '", std::string(mode), "'");
  return cell;
}

void set_debug_poison(bool on) { g_poison.store(on); }
bool debug_poison() { return g_poison.load(std::memory_order_relaxed); }

Tensor alloc(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  // large blocks come from pool.cpp's cache (2 MiB-aligned, transparent huge pages): a fresh
  // buffer per call is fresh pages, one fault per page on first touch
  Tensor t = opts.device().is_cpu() ? pooled_empty(sizes, opts) : at::empty(sizes, opts);
  if (debug_poison()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

Lengths make_lengths(const OptTensor& lengths, int64_t T, int64_t B) {
  Lengths L;
  L.len.assign(B, T);
  if (!lengths.has_value() || !lengths->defined()) return L;
  const Tensor l = lengths->to(at::kCPU).contiguous();
  TORCH_CHECK(l.scalar_type() == at::kLong, "fusedrnn: lengths must be int64, got ",
              l.scalar_type());
  TORCH_CHECK(l.dim() == 1 && l.size(0) == B, "fusedrnn: lengths must have shape (", B,
              ",), got ", l.sizes());
  const int64_t* p = l.data_ptr<int64_t>();
  L.given = true;
  for (int64_t b = 0; b < B; ++b)
    // lengths beyond T mean "live at every step", below 0 "never live", as in the reference
    L.len[b] = std::min<int64_t>(std::max<int64_t>(p[b], 0), T);
  return L;
}

std::vector<Tensor> cell_params_of(Cell cell, const OptTensorList& cell_params, const Tensor& xw,
                                   int64_t H, at::ScalarType acc) {
  const int want = num_cell_params(cell);
  const int64_t n = cell_params.has_value() ? int64_t(cell_params->size()) : 0;
  TORCH_CHECK(n == want, "fusedrnn: mode ", kCellNames[int(cell)], " takes ", want,
              " cell_params, got ", n);
  std::vector<Tensor> out;
  for (int64_t k = 0; k < n; ++k) {
    const Tensor& t = (*cell_params)[k];
    const int64_t size = cell_param_units(cell, int(k)) * H;
    TORCH_CHECK(t.scalar_type() == xw.scalar_type(), "fusedrnn: cell_params[", k,
                "] must have dtype ", xw.scalar_type(), " like xw, got ", t.scalar_type());
    TORCH_CHECK(t.device().is_cpu(), "fusedrnn: the cpu backend needs CPU tensors, got "
                "cell_params[", k, "] on ", t.device());
    TORCH_CHECK(t.dim() == 1 && t.size(0) == size, "fusedrnn: cell_params[", k,
                "] must have shape (", size, ",), got ", t.sizes());
    out.push_back(t.to(acc).contiguous());
  }
  return out;
}

// (zoneout no longer changes the layout: the LSTM saves its activations with it too, and
// backward rebuilds the cell's own c from them; the argument stays for _ws_units' callers)
WsLayout ws_layout(Cell cell, int64_t H, bool save, bool proj, bool /*zoneout*/) {
  WsLayout l;
  if (!save) return l;
  if (has_cell_state(cell)) {
    l.cs_off = l.width;
    l.width += H;
  }
  if (saves_activations(cell) && !proj) {
    l.act_off = l.width;
    l.width += num_saved(cell) * H;
  }
  return l;
}

CarryArgs carry_args(Cell cell, const OptTensor& reset, const OptTensor& zoneout, int64_t T,
                     int64_t B, int64_t H, int64_t Ho, at::ScalarType acc) {
  CarryArgs c;
  if (reset.has_value() && reset->defined()) {
    TORCH_CHECK(reset->dim() == 2 && reset->size(0) == T && reset->size(1) == B,
                "fusedrnn: reset must have shape [", T, ", ", B, "], got ", reset->sizes());
    TORCH_CHECK(reset->is_floating_point() && reset->device().is_cpu(),
                "fusedrnn: reset must be a floating CPU tensor, got ", reset->scalar_type(),
                " on ", reset->device());
    c.reset = reset->to(acc).contiguous();
  }
  if (zoneout.has_value() && zoneout->defined()) {
    const int64_t Z = Ho + (has_cell_state(cell) ? H : 0);
    TORCH_CHECK(zoneout->dim() == 3 && zoneout->size(0) == T && zoneout->size(1) == B &&
                    zoneout->size(2) == Z,
                "fusedrnn: zoneout must have shape [", T, ", ", B, ", ", Z, "], got ",
                zoneout->sizes());
    TORCH_CHECK(zoneout->is_floating_point() && zoneout->device().is_cpu(),
                "fusedrnn: zoneout must be a floating CPU tensor, got ",
                zoneout->scalar_type(), " on ", zoneout->device());
    c.zoneout = zoneout->to(acc).contiguous();
  }
  return c;
}

RowPartition partition_rows(const Lengths& L, int64_t macs_per_row_step) {
  const int64_t B = int64_t(L.len.size());
  std::vector<int64_t> order(B);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return L.len[a] > L.len[b]; });
  int64_t steps = 0;
  for (int64_t b = 0; b < B; ++b) steps += L.len[b];
  // below ~1M multiply-adds per thread the wake-up of a second thread costs more than it saves
  constexpr int64_t kMinMacsPerThread = int64_t(1) << 20;
  const int64_t by_work = std::max<int64_t>(1, steps * macs_per_row_step / kMinMacsPerThread);
  const int64_t groups =
      std::max<int64_t>(1, std::min<int64_t>({int64_t(at::get_num_threads()), B, by_work}));
  // longest rows first, each to the least loaded group: every group stays sorted longest first
  std::vector<std::vector<int64_t>> members(groups);
  std::vector<int64_t> load(groups, 0);
  for (int64_t b : order) {
    const int64_t g = std::min_element(load.begin(), load.end()) - load.begin();
    members[g].push_back(b);
    load[g] += std::max<int64_t>(L.len[b], 1);
  }
  RowPartition part;
  part.offsets.push_back(0);
  for (const auto& m : members) {
    part.rows.insert(part.rows.end(), m.begin(), m.end());
    part.offsets.push_back(int64_t(part.rows.size()));
  }
  return part;
}

}  // namespace cpu
}  // namespace fusedrnn
