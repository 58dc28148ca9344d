// A direct Python binding of cell_step for the nn cells' streaming fast path. Measured at B = 1,
// H = 64 (RNN): calling the op through torch.ops costs ~3.0 us, of which the kernel, checks and
// output allocation are ~0.8 us; the rest is the boxed call (Python arguments -> IValues ->
// dispatcher -> back). This function unpacks the tensors and calls the kernel itself.
//
// It only takes what the dispatcher would send straight to the CPU kernel: exact torch.Tensor or
// nn.Parameter objects, dense CPU tensors with no other dispatch keys (no Python subclass,
// functorch wrapper, negative or conjugate view), no torch_function or torch_dispatch mode, no
// RecordFunction callbacks (the profiler). Anything else returns NotImplemented and the caller
// goes through torch.ops.fusedrnn.cell_step, which handles it.
// In its own file: the torch Python headers (pybind11) triple the compile time of ops.cpp.
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/record_function.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <optional>

#include "recurrence.h"

namespace fusedrnn {
namespace cpu {

// cell_step.cpp: the op's body, c' undefined (here None) for the cells without one
std::tuple<Tensor, Tensor> cell_step_impl(c10::string_view mode, const Tensor& x,
                                          const Tensor& w_ih, const OptTensor& b_ih,
                                          const Tensor& w_hh, const OptTensor& b_hh,
                                          const Tensor& h, const OptTensor& c);

namespace {

// What the dispatcher would route to the plain CPU kernel (autocast passes custom ops through).
bool plain_cpu(PyObject* obj, const Tensor** out) {
  if (!THPVariable_CheckExact(obj)) return false;
  const Tensor& t = THPVariable_Unpack(obj);
  static const c10::DispatchKeySet kPlain({c10::DispatchKey::CPU, c10::DispatchKey::AutogradCPU,
                                           c10::DispatchKey::ADInplaceOrView,
                                           c10::DispatchKey::AutocastCPU});
  // a subset test (operator- would leave the backend bits: it subtracts functionalities only)
  if (!t.defined() || (t.key_set() | kPlain) != kPlain || t.layout() != at::kStrided) return false;
  *out = &t;
  return true;
}

}  // namespace

// _cell_step(mode, x, w_ih, b_ih | None, w_hh, b_hh | None, h, c | None) -> (h', c' | None) or
// NotImplemented; the results and errors are those of the op (None for its empty c').
PyObject* cell_step_py(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 8 || !PyUnicode_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "fusedrnn._C._cell_step: expected 8 arguments");
    return nullptr;
  }
  if (c10::impl::TorchDispatchModeTLS::stack_len() > 0 || at::impl::torch_function_mode_enabled() ||
      at::hasCallbacks())
    Py_RETURN_NOTIMPLEMENTED;
  const Tensor* t[7] = {};
  for (int i = 0; i < 7; ++i) {
    PyObject* a = args[i + 1];
    const bool optional = i == 2 || i == 4 || i == 6;  // b_ih, b_hh, c
    if (optional && a == Py_None) continue;
    if (!plain_cpu(a, &t[i])) Py_RETURN_NOTIMPLEMENTED;
  }
  Py_ssize_t len = 0;
  const char* mode = PyUnicode_AsUTF8AndSize(args[0], &len);
  if (mode == nullptr) return nullptr;
  auto opt = [&](int i) { return t[i] ? OptTensor(*t[i]) : OptTensor(); };
  std::tuple<Tensor, Tensor> r;
  // The GIL is let go only around big steps: dropping and taking it back (two mutexes) was 15 %
  // of a B = 1, H = 64 step under perf, and a step that short gains nothing from it.
  const int64_t macs = t[0]->numel() * t[1]->size(0) + t[5]->numel() * t[3]->size(0);
  std::optional<pybind11::gil_scoped_release> no_gil;
  if (macs > (int64_t(1) << 18)) no_gil.emplace();
  r = cell_step_impl(c10::string_view(mode, size_t(len)), *t[0], *t[1], opt(2), *t[3], opt(4),
                     *t[5], opt(6));
  no_gil.reset();
  PyObject* h = THPVariable_Wrap(std::move(std::get<0>(r)));
  if (h == nullptr) return nullptr;
  PyObject* c = THPVariable_Wrap(std::move(std::get<1>(r)));
  if (c == nullptr) {
    Py_DECREF(h);
    return nullptr;
  }
  PyObject* tup = PyTuple_Pack(2, h, c);
  Py_DECREF(h);
  Py_DECREF(c);
  return tup;
  END_HANDLE_TH_ERRORS
}

}  // namespace cpu
}  // namespace fusedrnn
