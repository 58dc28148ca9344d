"""Hostile inputs: each case runs on torch.nn and on fusedrnn (every CPU backend), and both must
raise the same exception type, or both return the same values and gradients (NaN where torch.nn
has NaN, the same infinities, denormals kept).

Cases that reach the C++ backend with odd sizes, strides or values run in a subprocess on the cpu
backend, so that a segfault or abort fails that test instead of killing the test run.

Run as ``python tests/test_hostile.py CASE`` it checks CASE for every cell on the cpu backend
(that is what the subprocess does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedrnn
from conftest import LAYER_BACKENDS, TOL

KINDS = ("RNN", "LSTM", "GRU")
F32 = torch.float32


def _randn(*shape, scale=1.0, dtype=F32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


def _hx(kind, L, B, H, make):
    """hx for ``kind``: make(shape) -> tensor; LSTM gets (h, c)."""
    return (make((L, B, H)), make((L, B, H))) if kind == "LSTM" else make((L, B, H))


def _with_nan(t, idx):
    t = t.clone()
    t[idx] = float("nan")
    return t


def _stride0(shape):
    # one value per layer broadcast over batch and units: strides (1, 0, 0)
    return _randn(shape[0], 1, 1).expand(*shape)


def _noncontig(shape):
    return _randn(shape[2], shape[1], shape[0], seed=3).permute(2, 1, 0)


# id -> dict(x=builder(kind) -> (input, hx), ctor=kwargs, I, H, grads=bool, atol=override)
# builders get the cell kind so that hx can be a pair for LSTM
CASES = {
    "nan_input": dict(x=lambda k: (_with_nan(_randn(6, 3, 4), (2, 1, 0)), None)),
    "pos_inf_input": dict(x=lambda k: (_with_nan(_randn(6, 3, 4), (2, 1, 0)).nan_to_num(
        nan=float("inf")), None)),
    "neg_inf_input": dict(x=lambda k: (_with_nan(_randn(6, 3, 4), (0, 2, 3)).nan_to_num(
        nan=float("-inf")), None)),
    "huge_1e30_input": dict(x=lambda k: (_randn(6, 3, 4, scale=1e30), None)),
    # pre-activations of about 1e4 (weights are O(1/sqrt(H)), so x ~ 1e4): saturation
    "preact_1e4": dict(x=lambda k: (_randn(6, 3, 4, scale=3e4), None)),
    # pre-activations across a few hundred either side of 0: exp/tanh/sigmoid through their
    # float32 overflow points (|x| ~ 88) into saturation
    "preact_sweep": dict(x=lambda k: (torch.linspace(-300, 300, 6 * 3 * 4).reshape(6, 3, 4),
                                      None)),
    # no bias and zero hx: every value stays denormal; atol below one denormal's size catches
    # a flush-to-zero
    "denormal_input": dict(x=lambda k: (_randn(6, 3, 4, scale=1e-39), None),
                           ctor=dict(bias=False), atol=1e-44),
    "denormal_hx": dict(x=lambda k: (torch.zeros(6, 3, 4), _hx(k, 1, 3, 5, lambda s: _randn(
        *s, scale=1e-39))), ctor=dict(bias=False), atol=1e-44),
    "int_input": dict(x=lambda k: (torch.randint(-3, 3, (6, 3, 4)), None), grads=False),
    "complex_input": dict(x=lambda k: (torch.randn(6, 3, 4, dtype=torch.complex64), None),
                          grads=False),
    "float64_input": dict(x=lambda k: (_randn(6, 3, 4, dtype=torch.float64), None)),
    "float64_hx": dict(x=lambda k: (_randn(6, 3, 4), _hx(k, 1, 3, 5, lambda s: _randn(
        *s, dtype=torch.float64)))),
    "float64_c0_only": dict(x=lambda k: (_randn(6, 3, 4), (_randn(1, 3, 5), _randn(
        1, 3, 5, dtype=torch.float64)) if k == "LSTM" else _randn(1, 3, 5, dtype=torch.float64))),
    "noncontiguous_hx": dict(x=lambda k: (_randn(6, 3, 4), _hx(k, 1, 3, 5, _noncontig))),
    "stride0_hx": dict(x=lambda k: (_randn(6, 3, 4), _hx(k, 1, 3, 5, _stride0))),
    "noncontiguous_input": dict(x=lambda k: (_randn(4, 3, 6).permute(2, 1, 0), None)),
    "stride0_input": dict(x=lambda k: (_randn(1, 1, 4).expand(6, 3, 4), None)),
    "nan_hx": dict(x=lambda k: (_randn(6, 3, 4), _hx(k, 1, 3, 5, lambda s: _with_nan(
        _randn(*s), (0, 1, 2))))),
    "input_1d": dict(x=lambda k: (_randn(4), None), grads=False),
    "input_5d": dict(x=lambda k: (_randn(1, 1, 6, 3, 4), None), grads=False),
    "empty_batch": dict(x=lambda k: (_randn(6, 0, 4), None)),
    "batch_20000_T2": dict(x=lambda k: (_randn(2, 20000, 4), None), H=3),
    "T_20000_batch_1": dict(x=lambda k: (_randn(20000, 1, 4, scale=0.5), None), H=3),
    "hidden_1": dict(x=lambda k: (_randn(6, 3, 4), None), H=1),
    # a float16 module on CPU: torch.nn runs it; values compared as above (torch.nn's own
    # float16 error counts in the allowance)
    "float16_module": dict(x=lambda k: (_randn(6, 3, 4).half(), None),
                           ctor=dict(dtype=torch.float16)),
    "proj_size_1": dict(x=lambda k: (_randn(6, 3, 4), None), ctor=dict(proj_size=1),
                        only=("LSTM",)),
}

#: cases that reach C++ with odd values, strides or sizes: run in a subprocess on the cpu backend
CRASH_PRONE = ("nan_input", "pos_inf_input", "huge_1e30_input", "denormal_input",
               "noncontiguous_hx", "stride0_hx", "noncontiguous_input", "stride0_input",
               "nan_hx", "empty_batch", "batch_20000_T2", "T_20000_batch_1", "hidden_1",
               "proj_size_1")


def _pair(kind, backend, case):
    torch.manual_seed(0)
    kw = dict(case.get("ctor", {}))
    I, H = 4, case.get("H", 5)
    ref = getattr(torch.nn, kind)(I, H, **kw)
    ours = getattr(fusedrnn, kind)(I, H, backend=backend, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _outcome(m, x, hx, grads):
    """("raise", exception type) or ("ok", outputs + gradients of a fixed loss)."""
    try:
        leaf = x.detach().clone().requires_grad_() if grads else x
        y, h = m(leaf, hx)
        outs = [y, *(h if isinstance(h, tuple) else (h,))]
        if not grads:
            return "ok", [o.detach() for o in outs]
        # a fixed non-uniform upstream gradient, so sign mistakes do not cancel
        loss = sum((o * torch.linspace(-1, 2, o.numel()).reshape(o.shape)).sum() for o in outs)
        gs = torch.autograd.grad(loss, [leaf, *m.parameters()])
        return "ok", [o.detach() for o in outs] + list(gs)
    except Exception as e:  # the outcome under test: compared with torch.nn's below
        return "raise", type(e)


def _to64(hx):
    if hx is None:
        return None
    return tuple(h.double() for h in hx) if isinstance(hx, tuple) else hx.double()


def _assert_same_values(got, want, exact, tol, what):
    """NaN and infinities exactly where torch.nn (float32) has them; finite values within TOL
    of ``exact`` (torch.nn in float64 on the same values) plus twice torch.nn's own float32
    error there: sums of 20000 terms or 1 - tanh^2 near saturation carry rounding that depends
    on the order of operations, torch.nn's as much as ours (flash-attention's criterion)."""
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.shape, want.shape)
    assert torch.equal(got.isnan(), want.isnan()), \
        f"{what}: NaN at {got.isnan().nonzero().tolist()}, torch.nn {want.isnan().nonzero().tolist()}"
    inf = want.isinf()
    assert torch.equal(got.isinf(), inf) and torch.equal(got[inf], want[inf]), \
        f"{what}: infinities differ: {got[got.isinf() | inf].tolist()} vs {want[got.isinf() | inf].tolist()}"
    fin = want.isfinite()
    g, w = got[fin].double(), want[fin].double()
    e = exact[fin] if exact is not None else w
    e = torch.where(e.isfinite(), e, w)  # float64 may not overflow where float32 did
    err, allowed = (g - e).abs(), tol["atol"] + tol["rtol"] * e.abs() + 2 * (w - e).abs()
    if err.numel() and not bool((err <= allowed).all()):
        i = int((err - allowed).argmax())
        raise AssertionError(f"{what}: {g[i].item():.9g} vs exact {e[i].item():.9g} "
                             f"(torch.nn {w[i].item():.9g}), error {err[i].item():.3g} > "
                             f"{allowed[i].item():.3g}")


def check_case(name, kind, backend):
    case = CASES[name]
    if kind not in case.get("only", KINDS):
        return
    ref, ours = _pair(kind, backend, case)
    x, hx = case["x"](kind)
    grads = case.get("grads", True) and x.is_floating_point()
    want, got = _outcome(ref, x, hx, grads), _outcome(ours, x, hx, grads)
    assert got[0] == want[0], f"{name}/{kind}: torch.nn -> {want}, fusedrnn -> {got}"
    if want[0] == "raise":
        assert got[1] is want[1], f"{name}/{kind}: torch.nn raised {want[1]}, fusedrnn {got[1]}"
        return
    exact = [None] * len(want[1])
    if x.dtype in (F32, torch.float16):
        exact = _outcome(ref.double(), x.double(), _to64(hx), grads)[1]
    tol = dict(TOL[x.dtype if x.dtype in TOL else F32],
               **({"atol": case["atol"]} if "atol" in case else {}))
    for i, (a, b, e) in enumerate(zip(want[1], got[1], exact, strict=True)):
        _assert_same_values(b, a, e, tol, f"{name}/{kind} result {i}")


# Differences found by this table; strict xfails, so a fix turns them red until the mark is
# removed. (backend, case, kind) -> reason; kind None: every kind (the subprocess test).
KNOWN = {
    ("cpu", "preact_sweep", "GRU"): (
        "cells.h fr_fast_tanhf is up to 4.6 ulp off near |x| ~ 7.9 (torch's float32 tanh 0.6 "
        "ulp); 1 - tanh^2 there turns that into a 5% error on a weight gradient where "
        "torch.nn's float32 error is 0.5%"),
    ("reference", "T_20000_batch_1", "LSTM"): (
        "the float32 reference accumulates weight gradients step by step through autograd: "
        "1.3e-5 relative error after 20000 steps, 100x torch.nn's single GEMM over all steps"),
}
# Seen on AMD CPUs (EPYC Zen 3, AVX2; EPYC Zen 5, AVX-512), where torch's sgemm takes another path
# than on Intel: the float32 reference's weight gradient, a sum over 20000 rows in one autograd
# GEMM per step, is 1.2e-3 off (9e-5 relative, about one float32 ulp of the sum's magnitude) where
# torch.nn (oneDNN) happens to be 1.7e-4 off; the criterion allows twice torch.nn's own error.
# Passes on Intel Sapphire Rapids. (Session 5 keyed this on "no AVX-512"; the Zen 5 has AVX-512
# and fails the same way: it is the vendor's BLAS path, not the instruction set.)
def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("vendor_id")),
                        "")
    except OSError:
        return ""


if _cpu_vendor() == "AuthenticAMD":
    KNOWN[("reference", "batch_20000_T2", "LSTM")] = (
        "torch's sgemm on AMD sums the float32 reference's 20000-row weight gradient with 9e-5 "
        "relative error, more than twice torch.nn's (oneDNN) on this CPU")


def _known(request, backend, name, kind):
    reason = KNOWN.get((backend, name, kind))
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_in_process(request, name, kind, backend):
    if backend == "cpu" and name in CRASH_PRONE:
        pytest.skip("runs in a subprocess: test_hostile_cpu_subprocess")
    _known(request, backend, name, kind)
    check_case(name, kind, backend)


@pytest.mark.skipif("cpu" not in LAYER_BACKENDS, reason="the cpu backend is not built")
@pytest.mark.parametrize("name", CRASH_PRONE)
def test_hostile_cpu_subprocess(request, name):
    _known(request, "cpu", name, None)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__, name], env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode < 0:
        pytest.fail(f"{name}: the cpu backend crashed with {signal.Signals(-proc.returncode).name}"
                    f"\n{proc.stderr[-3000:]}")
    assert proc.returncode == 0, f"{name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def test_hx_dtype_matches_torch_nn_exception(backend):
    """The issue's case: float64 hx into a float32 GRU raised ValueError (the op's check);
    torch.nn raises RuntimeError."""
    ref, ours = _pair("GRU", backend, {})
    x, h = _randn(5, 2, 4), _randn(1, 2, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        ref(x, h)
    with pytest.raises(RuntimeError, match=r"hx dtype \(torch.float64\) does not match input"):
        ours(x, h)


def test_inference_mode_matches_and_blocks_backward(backend):
    ref, ours = _pair("LSTM", backend, {})
    x = _randn(6, 3, 4)
    with torch.inference_mode():
        (y_ref, _), (y, (h, c)) = ref(x), ours(x)
    assert y.is_inference() and h.is_inference() and c.is_inference()
    torch.testing.assert_close(y, y_ref, **TOL[F32])
    with pytest.raises(RuntimeError):
        y.sum().backward()


@pytest.mark.parametrize("kind", KINDS)
def test_backward_twice_without_retain_graph(kind, backend):
    errors = []
    for m in _pair(kind, backend, {}):
        y, _ = m(_randn(6, 3, 4).requires_grad_())
        y.sum().backward()
        with pytest.raises(RuntimeError) as info:
            y.sum().backward()
        errors.append(type(info.value))
    assert errors[0] is errors[1]


if __name__ == "__main__":  # the subprocess of test_hostile_cpu_subprocess
    os.environ.setdefault("TRITON_INTERPRET", "1")
    for k in KINDS:
        check_case(sys.argv[1], k, "cpu")
