"""Property-based parity of every backend's recurrence op with the float64 reference.

Random mode, T, B, H (around the CPU micro-kernel's 16-row / 16-unit register blocks), projection
size, bias, c0, lengths (none, sorted, unsorted, all-equal, all-1, with zeros), reverse, the
recurrent gradient clip and the dtype; outputs and the gradients of every input
(cuda_utils.check_parity: inputs rounded to the dtype, the reference run in float64 on the same
values, tolerance conftest.TOL[dtype]). Backends: cpu (NaN-poisoned buffers), reference, the
Triton interpreter at tiny sizes, and the CUDA backend's time loops under host emulation.
"""

from __future__ import annotations

import pytest
import torch

import fusedrnn
from conftest import TOL
from cuda_utils import (  # noqa: F401  (emu is a fixture)
    NAMES_GRAD, NAMES_OUT, check_parity, emu, emu_recurrence, run_with_grads,
)
from fusedrnn.ops import cpu, reference_backend
from fusedrnn.ops.cells import GATES, TORCH_MODES
from fusedrnn.ops.reference import recurrence_ref

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import example, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

HIDDEN = (1, 2, 7, 15, 16, 17, 31, 33, 64, 65)
BATCH = (1, 2, 3, 5, 7, 16, 17, 33)
# the Triton interpreter takes ~0.1-1 s per example
TINY = settings(max_examples=max(4, settings.default.max_examples // 2))


@st.composite
def op_cases(draw, dtypes, hidden=HIDDEN, batch=BATCH, max_t=9):
    mode = draw(st.sampled_from(TORCH_MODES))
    H = draw(st.sampled_from(hidden))
    P = draw(st.integers(1, H)) if mode == "LSTM" and draw(st.booleans()) else 0
    B = draw(st.sampled_from(batch))
    T = draw(st.integers(1, max_t))
    kind = draw(st.sampled_from(("none", "sorted", "unsorted", "all_equal", "all_one",
                                 "with_zeros")))
    case = dict(mode=mode, H=H, P=P, B=B, T=T, kind=kind, reverse=draw(st.booleans()),
                bias=draw(st.booleans()), c0=draw(st.booleans()),
                clip=draw(st.sampled_from((None, 0.05))), dtype=draw(st.sampled_from(dtypes)),
                seed=draw(st.integers(0, 2**16)))
    note(f"case: {case}")
    return case


def _lengths(kind, T, B, g):
    if kind == "none":
        return None
    if kind == "all_equal":
        return torch.full((B,), T, dtype=torch.int64)
    if kind == "all_one":
        return torch.ones(B, dtype=torch.int64)
    low = 0 if kind == "with_zeros" else 1
    lengths = torch.randint(low, T + 1, (B,), generator=g)
    return lengths.sort(descending=True).values if kind == "sorted" else lengths


def _inputs(c):
    """(xw, w_hh, b_hh, h0, c0, w_hr) in float64 at torch.nn's init scale (1/sqrt(fan_in)), so
    float32 gradients stay O(1) and their rounding is comparable to the tolerance table."""
    g = torch.Generator().manual_seed(c["seed"])
    G, H, P, B, T = GATES[c["mode"]], c["H"], c["P"], c["B"], c["T"]
    Ho = P or H
    r = lambda *s, scale=0.6: torch.randn(*s, generator=g, dtype=torch.float64) * scale  # noqa
    inputs = (r(T, B, G * H), r(G * H, Ho, scale=Ho ** -0.5), r(G * H) if c["bias"] else None,
              r(B, Ho), r(B, H) if c["mode"] == "LSTM" and c["c0"] else None,
              r(P, H, scale=H ** -0.5) if P else None)
    lengths = _lengths(c["kind"], T, B, g)
    note(f"lengths: {None if lengths is None else lengths.tolist()}")
    return tuple(None if t is None else t.to(c["dtype"]) for t in inputs), lengths


def _check(fn, c):
    inputs, lengths = _inputs(c)
    if c["dtype"] == torch.bfloat16:
        return _check_low_precision(fn, c, inputs, lengths)
    check_parity(fn, c["mode"], c["dtype"], inputs, lengths, c["reverse"], c["clip"])


def _check_low_precision(fn, c, inputs, lengths):
    """bfloat16: rounding outputs and per-step values to 8 mantissa bits is inherent to the
    dtype, and TOL[bfloat16] against float64 is exceeded by the reference itself run in
    bfloat16 (gradients with cancellation). So, element by element, the error against the
    float64 reference may be TOL's plus twice the bfloat16 reference's own error there
    (flash-attention's criterion, docs/architecture.md convention 5, with TOL as its floor)."""
    mode, rev, clip = c["mode"], c["reverse"], c["clip"]

    def ref(*a):
        return recurrence_ref(mode, *a[:5], lengths, rev, a[5], recurrent_grad_clip=clip)

    def ours(*a):
        return fn(mode, *a[:5], lengths, rev, a[5], clip)

    exact = run_with_grads(ref, inputs, c["dtype"], upcast=True)
    same_dtype = run_with_grads(ref, inputs, c["dtype"], upcast=False)
    got = run_with_grads(ours, inputs, c["dtype"], upcast=False)
    tol = TOL[c["dtype"]]
    for name, e, p, a in zip(NAMES_OUT + NAMES_GRAD, *(o + g for o, g in (exact, same_dtype,
                                                                            got))):
        if e is None or a is None:
            assert (a is None) == (p is None), name
            continue
        assert a.dtype == c["dtype"], (name, a.dtype)
        err, err_ref = (a.double() - e).abs(), (p.double() - e).abs()
        allowed = tol["atol"] + tol["rtol"] * e.abs() + 2 * err_ref
        worst = int((err - allowed).argmax()) if err.numel() else 0
        assert bool((err <= allowed).all()), (
            f"{name}: error {err.flatten()[worst]:.3g} at flat index {worst} (exact "
            f"{e.flatten()[worst]:.4g}, ours {a.flatten()[worst].item():.4g}, bfloat16 "
            f"reference {p.flatten()[worst].item():.4g})")


def _cpu(mode, xw, w, b, h0, c0, lengths, reverse, w_hr, clip):
    return cpu.recurrence(mode, xw, w, b, h0, c0, lengths, reverse, w_hr,
                              recurrent_grad_clip=clip)


def _reference(mode, xw, w, b, h0, c0, lengths, reverse, w_hr, clip):
    return reference_backend.recurrence(mode, xw, w, b, h0, c0, lengths, reverse, w_hr,
                                        recurrent_grad_clip=clip)


@pytest.fixture(scope="module")
def cpu_poisoned():
    if "cpu" not in fusedrnn.available_backends():
        pytest.skip("the cpu backend is not built")
    fusedrnn._ext._C._set_debug_poison(True)  # buffers the C++ side allocates start as NaN
    yield
    fusedrnn._ext._C._set_debug_poison(False)


@given(c=op_cases((torch.float64, torch.float32)))
def test_cpu_op_matches_reference(cpu_poisoned, c):
    _check(_cpu, c)


# Found by this suite (deep profile) on the per-step-GEMM cpu backend: its bfloat16 backward
# loses precision on weight gradients with cancellation (here d_w_hh: exact 0.2252, bfloat16
# reference 0.2256, cpu 0.208, ~17 bfloat16 ulps), as if the per-step gradients were rounded
# to bfloat16 before the weight-gradient GEMM. Pinned with @example so that it fails every
# run; a strict xfail, so a fixed backend turns it red until the mark is removed.
@pytest.mark.xfail(strict=True, reason="cpu bfloat16 backward: weight gradients with "
                   "cancellation ~17 bfloat16 ulps off (see the comment above)")
@example(c=dict(mode="RNN_TANH", H=64, P=0, B=2, T=1, kind="none", reverse=False, bias=False,
                c0=False, clip=None, dtype=torch.bfloat16, seed=0))
@given(c=op_cases((torch.bfloat16,)))
def test_cpu_op_bfloat16_matches_reference(cpu_poisoned, c):
    _check(_cpu, c)


@given(c=op_cases((torch.float64, torch.float32), max_t=6))
def test_reference_op_float32_matches_float64(c):
    # the float32 reference is what the layer suites' float32 runs rely on
    _check(_reference, c)


@given(c=op_cases((torch.float64, torch.float32, torch.bfloat16), batch=(1, 2, 3, 5, 17)))
def test_cuda_emulated_op_matches_reference(emu, c):
    _check(emu_recurrence, c)


@pytest.fixture(scope="module")
def triton_op():
    tri = pytest.importorskip("fusedrnn.ops.triton")
    if tri.unavailable() is not None or not tri.supports(torch.device("cpu")):
        pytest.skip("the Triton interpreter is not available here")
    return tri.recurrence


@TINY
@given(c=op_cases((torch.float32,), hidden=(1, 3, 16, 17), batch=(1, 2, 3), max_t=3))
def test_triton_interpreted_op_matches_reference(triton_op, c):
    # the interpreter runs every program instance in Python: tiny sizes only, but still the
    # masks for units beyond H (17 = one full 16-block + 1) and for lengths
    _check(lambda *a: triton_op(*a), c)
