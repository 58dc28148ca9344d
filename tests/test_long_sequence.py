"""Very long sequences on the cpu backend: T = 100 000, B = 1, H = 8, forward and backward.

No timing is asserted (benchmarks/bench_long.py measures time and memory). What is checked:

* no Python runs per step: the number of Python function calls of a fwd+bwd at T = 100 000 is
  that of T = 10, so a Python loop over steps (or a per-step autograd node implemented in
  Python) in forward or backward fails, and the run time is bounded by design;
* no recursion: the call runs with the Python recursion limit just above the current depth;
* the results are right: a forward over the whole sequence equals, bitwise, two forwards over
  its halves with the state carried across (the same steps in the same order), and every
  gradient is finite.
"""

from __future__ import annotations

import sys

import pytest
import torch

import fusedrnn

pytestmark = pytest.mark.skipif("cpu" not in fusedrnn.available_backends(),
                                reason="the cpu backend is not built")

T_LONG, H = 100_000, 8


def _module(cls):
    torch.manual_seed(0)
    return getattr(fusedrnn, cls)(H, H, backend="cpu")


def _fwd_bwd(m, x):
    leaf = x.detach().clone().requires_grad_()
    y, hidden = m(leaf)
    hs = hidden if isinstance(hidden, tuple) else (hidden,)
    (y.sum() + sum(h.sum() for h in hs)).backward()
    return y.detach(), [h.detach() for h in hs], leaf.grad


def _python_calls(fn):
    """Python function calls made while fn() runs (C functions are not counted)."""
    calls = 0

    def prof(frame, event, arg):
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def _depth():
    f, d = sys._getframe(), 0
    while f is not None:
        f, d = f.f_back, d + 1
    return d


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_no_per_step_python(cls):
    m = _module(cls)
    g = torch.Generator().manual_seed(1)
    short, long = torch.randn(10, 1, H, generator=g), torch.randn(T_LONG, 1, H, generator=g)
    _fwd_bwd(m, short)  # first-call work (imports, caches) out of the count
    n_short = _python_calls(lambda: _fwd_bwd(m, short))
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(_depth() + 200)
    try:
        n_long = _python_calls(lambda: _fwd_bwd(m, long))
    finally:
        sys.setrecursionlimit(old)
    for p in m.parameters():
        assert p.grad is not None and bool(p.grad.isfinite().all())
    # a few calls of slack for first-time paths; per-step Python would add >= T_LONG
    assert n_long <= n_short + 20, f"{n_long} Python calls at T={T_LONG} vs {n_short} at T=10"


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_long_forward_equals_chunked(cls):
    m = _module(cls)
    x = torch.randn(T_LONG, 1, H, generator=torch.Generator().manual_seed(2))
    y, hs, dx = _fwd_bwd(m, x)
    assert bool(dx.isfinite().all()) and bool(y.isfinite().all())
    with torch.no_grad():
        half = T_LONG // 2
        y1, s1 = m(x[:half])
        y2, s2 = m(x[half:], s1)
    assert torch.equal(y, torch.cat([y1, y2])), "forward over T != forward over two halves"
    for a, b in zip(hs, s2 if isinstance(s2, tuple) else (s2,)):
        assert torch.equal(a, b)
