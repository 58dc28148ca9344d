// Schemas of the fusedrnn:: custom ops and their CPU kernels. Fake (meta) implementations and
// autograd formulas are registered from Python (python/fusedrnn/ops/cpu.py); other files add ops
// with TORCH_LIBRARY_FRAGMENT(fusedrnn, m).
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/recurrence.h"

TORCH_LIBRARY(fusedrnn, m) {
  // see csrc/cpu/recurrence.h for shapes; `cs` (LSTM cell states) is saved for backward
  m.def(
      "recurrence_fwd(str mode, Tensor xw, Tensor w_hh, Tensor? b_hh, Tensor h0, Tensor? c0, "
      "Tensor? lengths, bool reverse, Tensor? w_hr) "
      "-> (Tensor y, Tensor h_T, Tensor c_T, Tensor cs)");
  m.def(
      "recurrence_bwd(str mode, Tensor? dy, Tensor? dh_T, Tensor? dc_T, Tensor xw, Tensor w_hh, "
      "Tensor? b_hh, Tensor h0, Tensor? c0, Tensor? lengths, bool reverse, Tensor? w_hr, "
      "Tensor y, Tensor cs) "
      "-> (Tensor d_xw, Tensor d_w_hh, Tensor d_b_hh, Tensor dh0, Tensor dc0, Tensor d_w_hr)");
  m.def(
      "cell_step(str mode, Tensor x, Tensor w_ih, Tensor? b_ih, Tensor w_hh, Tensor? b_hh, "
      "Tensor h, Tensor? c) -> (Tensor h_new, Tensor c_new)");
}

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("recurrence_fwd", &fusedrnn::cpu::recurrence_fwd);
  m.impl("recurrence_bwd", &fusedrnn::cpu::recurrence_bwd);
  m.impl("cell_step", &fusedrnn::cpu::cell_step);
}

// The Python module fusedrnn._C: importing it registers the ops above. It also exposes the
// NaN-poison test hook (csrc/cpu/recurrence.h).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("_set_debug_poison", &fusedrnn::cpu::set_debug_poison,
        "Fill every buffer the CPU ops allocate with NaN (tests only).");
  m.def("_debug_poison", &fusedrnn::cpu::debug_poison);
}
