"""The cells' activations at extreme arguments, through the op, against float64 libm math.

Every gate pre-activation of every mode is swept over ±inf, ±1e38, ±1e30, ±1e4, the float32
exp/tanh overflow and underflow points (|x| ~ 88-104, 8-20), moderate values, denormals and
NaN, with the other gates at a fixed moderate value; two steps, so that a saturated or NaN
state also feeds the next step. Outputs, final states and the gradients of every input are
compared in float32 with the float64 reference (torch.tanh / torch.sigmoid in float64, i.e.
libm-accurate) rounded to float32:

* NaN exactly where the float64 math has NaN (propagated, never swallowed or invented);
* infinities and exact saturation values exactly: where the rounded float64 result is 0, ±1
  or ±inf, ours must be that value bit for bit (a fast exp that stops at a tiny denormal
  instead of 0 turns 0 * inf = NaN into ±inf in the weight gradients, see test_hostile.py);
* everything else within conftest.TOL[float32].
"""

from __future__ import annotations

import pytest
import torch

import fusedrnn
from conftest import TOL
from cuda_utils import emu, emu_recurrence  # noqa: F401  (emu is a fixture)
from fusedrnn.ops.cells import GATES, TORCH_MODES
from fusedrnn.ops.reference import recurrence_ref

INF = float("inf")
SWEEP = [-INF, -1e38, -1e30, -1e4, -200.0, -104.0, -103.0, -89.0, -88.7, -88.0, -50.0, -20.0,
         -16.6, -10.0, -9.0, -7.9, -5.0, -1.0, -1e-3, -1e-30, -1e-40, 0.0, 1e-40, 1e-30, 1e-3,
         1.0, 5.0, 7.9, 9.0, 10.0, 16.6, 20.0, 50.0, 88.0, 88.7, 89.0, 103.0, 104.0, 200.0,
         1e4, 1e30, 1e38, INF, float("nan")]


def _case(mode):
    """Float32 op inputs: one row per (gate, swept value); H = 1; T = 2 (the second step
    with moderate inputs, so a saturated or NaN state flows on)."""
    G, N = GATES[mode], len(SWEEP)
    xw = torch.full((2, G * N, G), 0.3)
    for g in range(G):
        xw[0, g * N:(g + 1) * N, g] = torch.tensor(SWEEP)
    w_hh = torch.full((G, 1), 0.25)  # non-zero: the state reaches every gate of step 2
    b_hh = torch.full((G,), -0.125)
    h0 = torch.full((G * N, 1), 0.5)
    c0 = torch.full((G * N, 1), -0.75) if mode == "LSTM" else None
    return xw, w_hh, b_hh, h0, c0


def _results(fn, mode, inputs, dtype):
    leaves = [None if t is None else t.detach().to(dtype).clone().requires_grad_()
              for t in inputs]
    y, h, c = fn(mode, *leaves)
    outs = [y, h] + ([c] if c is not None else [])
    # fixed, sign-mixed upstream weights (exact in float32)
    loss = sum((o * torch.linspace(-1, 1.5, o.numel(), dtype=dtype).reshape(o.shape)).sum()
               for o in outs)
    grads = torch.autograd.grad(loss, [t for t in leaves if t is not None])
    return [o.detach() for o in outs] + list(grads)


NAMES = ("y", "h_T", "c_T")


def _where(mode, mask):
    """(gate, swept value) of the first failing rows, or plain indices for weight grads."""
    N = len(SWEEP)
    if mask.dim() >= 2 and mask.shape[-2] == GATES[mode] * N:
        return [(int(r) // N, SWEEP[int(r) % N]) for r in mask.nonzero()[:6, -2]]
    return mask.nonzero()[:6].tolist()


def _compare(mode, got, exact):
    tol = TOL[torch.float32]
    names = [n for n in NAMES if n != "c_T" or mode == "LSTM"] + \
        ["d_xw", "d_w_hh", "d_b_hh", "dh0"] + (["dc0"] if mode == "LSTM" else [])
    for name, a, e in zip(names, got, exact, strict=True):
        assert a.dtype == torch.float32, name
        e32 = e.float()
        where = lambda m: _where(mode, m)  # noqa: E731
        assert torch.equal(a.isnan(), e.isnan()), \
            f"{mode} {name}: NaN differs at {where(a.isnan() ^ e.isnan())}"
        exact_vals = e32.isinf() | (e32 == 0) | (e32.abs() == 1)
        bits = (a == e32) | a.isnan()
        bad = exact_vals & ~bits
        assert not bad.any(), (f"{mode} {name}: not exactly saturated at "
                               f"{where(bad)}: got {a[bad][:6].tolist()}, want "
                               f"{e32[bad][:6].tolist()}")
        fin = e.isfinite() & ~exact_vals
        torch.testing.assert_close(a[fin].double(), e[fin], **tol,
                                   msg=lambda m: f"{mode} {name}: {m}")


def _cpu(mode, *a):
    return fusedrnn.ops.cpu.recurrence(mode, *a)


def _ref32(mode, *a):
    return recurrence_ref(mode, *a)


# Found by these tests; strict xfails, so a fix turns them red until the mark is removed.
KNOWN = {
    ("triton", "RNN_RELU"): "the Triton kernel's relu returns 0 for a NaN pre-activation "
                            "(tl.maximum does not propagate NaN): NaN swallowed",
}


def _known(request, which, mode):
    if (which, mode) in KNOWN:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN[which, mode]))


@pytest.mark.parametrize("mode", list(TORCH_MODES))
@pytest.mark.parametrize("which", ["cpu", "reference"])
def test_extreme_preactivations(request, which, mode):
    if which == "cpu" and "cpu" not in fusedrnn.available_backends():
        pytest.skip("the cpu backend is not built")
    _known(request, which, mode)
    inputs = _case(mode)
    exact = _results(recurrence_ref, mode, inputs, torch.float64)
    _compare(mode, _results(_cpu if which == "cpu" else _ref32, mode, inputs, torch.float32),
             exact)


@pytest.mark.parametrize("mode", list(TORCH_MODES))
def test_extreme_preactivations_cuda_emulated(request, emu, mode):
    _known(request, "emu", mode)
    inputs = _case(mode)
    exact = _results(recurrence_ref, mode, inputs, torch.float64)
    fn = lambda m, *a: emu_recurrence(m, *a, None, False, None, None)  # noqa: E731
    _compare(mode, _results(fn, mode, inputs, torch.float32), exact)


@pytest.mark.parametrize("mode", list(TORCH_MODES))
def test_extreme_preactivations_triton_interpreted(request, mode):
    tri = pytest.importorskip("fusedrnn.ops.triton")
    if tri.unavailable() is not None or not tri.supports(torch.device("cpu")):
        pytest.skip("the Triton interpreter is not available here")
    _known(request, "triton", mode)
    inputs = _case(mode)
    exact = _results(recurrence_ref, mode, inputs, torch.float64)
    _compare(mode, _results(tri.recurrence, mode, inputs, torch.float32), exact)
