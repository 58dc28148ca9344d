// Schemas of the fusedrnn:: custom ops and their CPU kernels. Fake (meta) implementations and
// autograd formulas are registered from Python (python/fusedrnn/ops/cpu.py); other files add ops
// with TORCH_LIBRARY_FRAGMENT(fusedrnn, m).
// Python.h first, as CPython asks; torch/extension.h (pybind11 + all of torch) is avoided on
// purpose: it triples the compile time of the extension.
#include <Python.h>
#include <torch/library.h>

#include "cpu/kernel.h"
#include "cpu/recurrence.h"

TORCH_LIBRARY(fusedrnn, m) {
  // see csrc/cpu/recurrence.h for shapes; `ws` is what backward needs from the forward;
  // reset [T, B] and zoneout [T, B, Z]: python/fusedrnn/ops/reference.py
  m.def(
      "recurrence_fwd(str mode, Tensor xw, Tensor w_hh, Tensor? b_hh, Tensor h0, Tensor? c0, "
      "Tensor? lengths, bool reverse, Tensor? w_hr, bool save=True, Tensor? reset=None, "
      "Tensor? zoneout=None, Tensor[]? cell_params=None) "
      "-> (Tensor y, Tensor h_T, Tensor c_T, Tensor ws)");
  m.def(
      "recurrence_bwd(str mode, Tensor? dy, Tensor? dh_T, Tensor? dc_T, Tensor xw, Tensor w_hh, "
      "Tensor? b_hh, Tensor h0, Tensor? c0, Tensor? lengths, bool reverse, Tensor? w_hr, "
      "Tensor y, Tensor ws, float clip=0.0, Tensor? reset=None, Tensor? zoneout=None, "
      "Tensor[]? cell_params=None) "
      "-> (Tensor d_xw, Tensor d_w_hh, Tensor d_b_hh, Tensor dh0, Tensor dc0, Tensor d_w_hr, "
      "Tensor[] d_cell_params)");
  // a [M, K] @ w [N, K]^T + b, each row reduced in a fixed order (csrc/cpu/linear.cpp)
  m.def("rows_linear(Tensor a, Tensor w, Tensor? b) -> Tensor");
  m.def(
      "cell_step(str mode, Tensor x, Tensor w_ih, Tensor? b_ih, Tensor w_hh, Tensor? b_hh, "
      "Tensor h, Tensor? c) -> (Tensor h_new, Tensor c_new)");
}

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("recurrence_fwd", &fusedrnn::cpu::recurrence_fwd);
  m.impl("recurrence_bwd", &fusedrnn::cpu::recurrence_bwd);
  m.impl("cell_step", &fusedrnn::cpu::cell_step);
  m.impl("rows_linear", &fusedrnn::cpu::rows_linear);
}

namespace fusedrnn::cpu {
// csrc/cpu/cell_step_py.cpp: the nn cells' direct binding of cell_step
PyObject* cell_step_py(PyObject*, PyObject* const* args, Py_ssize_t nargs);
}  // namespace fusedrnn::cpu

// The Python module fusedrnn._C: importing it registers the ops above. It also exposes the
// NaN-poison test hook (csrc/cpu/recurrence.h).
namespace {

PyObject* set_debug_poison(PyObject*, PyObject* on) {
  const int flag = PyObject_IsTrue(on);
  if (flag < 0) return nullptr;
  fusedrnn::cpu::set_debug_poison(flag != 0);
  Py_RETURN_NONE;
}

PyObject* get_debug_poison(PyObject*, PyObject*) {
  return PyBool_FromLong(fusedrnn::cpu::debug_poison());
}

PyObject* cpu_isas(PyObject*, PyObject*) {
  int n = 0;
  const char* const* names = fusedrnn::cpu::supported_isas(&n);
  PyObject* list = PyList_New(n);
  if (list == nullptr) return nullptr;
  for (int i = 0; i < n; ++i) PyList_SET_ITEM(list, i, PyUnicode_FromString(names[i]));
  return list;
}

PyObject* cpu_isa(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(fusedrnn::cpu::kernels_f32().name);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

// ws_layout's width in units of H, for the fake kernels (python/fusedrnn/ops/cpu.py): one
// statement of what the forward saves. Args: (mode: str, save: bool, proj: bool[, zoneout]).
PyObject* ws_units(PyObject*, PyObject* args) {
  const char* mode = nullptr;
  int save = 0, proj = 0, zoneout = 0;
  if (!PyArg_ParseTuple(args, "spp|p", &mode, &save, &proj, &zoneout)) return nullptr;
  try {
    const auto cell = fusedrnn::cpu::parse_mode(mode);
    const auto wl = fusedrnn::cpu::ws_layout(cell, 1, save != 0, proj != 0, zoneout != 0);
    return PyLong_FromLongLong(wl.width);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
}

// The CPU buffer cache (csrc/cpu/pool.cpp): _cpu_pool_stats() -> dict, _cpu_pool_empty(),
// _cpu_pool_set_limit(bytes).
PyObject* cpu_pool_stats(PyObject*, PyObject*) {
  const auto s = fusedrnn::cpu::pool_stats();
  return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L}", "cached_bytes", (long long)s.cached_bytes,
                       "cached_blocks", (long long)s.cached_blocks, "limit_bytes",
                       (long long)s.limit_bytes, "hits", (long long)s.hits, "misses",
                       (long long)s.misses);
}

PyObject* cpu_pool_empty(PyObject*, PyObject*) {
  fusedrnn::cpu::pool_empty();
  Py_RETURN_NONE;
}

PyObject* cpu_pool_set_limit(PyObject*, PyObject* arg) {
  const long long b = PyLong_AsLongLong(arg);
  if (b == -1 && PyErr_Occurred()) return nullptr;
  if (b < 0) {
    PyErr_SetString(PyExc_ValueError, "_cpu_pool_set_limit: bytes must be >= 0");
    return nullptr;
  }
  fusedrnn::cpu::pool_set_limit(b);
  Py_RETURN_NONE;
}

PyMethodDef kMethods[] = {
    {"_cpu_pool_stats", cpu_pool_stats, METH_NOARGS,
     "The CPU buffer cache: cached_bytes, cached_blocks, limit_bytes, hits, misses."},
    {"_cpu_pool_empty", cpu_pool_empty, METH_NOARGS, "Free every block the CPU cache holds."},
    {"_cpu_pool_set_limit", cpu_pool_set_limit, METH_O,
     "Most bytes the CPU cache keeps while unused (0: none)."},
    {"_set_debug_poison", set_debug_poison, METH_O,
     "Fill every buffer the CPU ops allocate with NaN (tests only)."},
    {"_debug_poison", get_debug_poison, METH_NOARGS, "Whether the NaN-poison hook is on."},
    {"_ws_units", ws_units, METH_VARARGS,
     "Width of the CPU forward's workspace in units of H: (mode, save, proj[, zoneout]) -> int."},
    {"_cpu_isas", cpu_isas, METH_NOARGS,
     "The instruction sets the CPU loops can use here, best first."},
    {"_cpu_isa", cpu_isa, METH_NOARGS,
     "The instruction set the CPU loops use now (FUSEDRNN_CPU_ISA or the best one)."},
    {"_cell_step", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
                       &fusedrnn::cpu::cell_step_py)),
     METH_FASTCALL,
     "cell_step without the dispatcher for plain CPU tensors; NotImplemented otherwise."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, kMethods,
                       nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&kModule); }
