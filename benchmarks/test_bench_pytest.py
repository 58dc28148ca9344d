"""pytest-benchmark suite of the sweep's cases (not part of the CI test command ``pytest tests``).

    pytest benchmarks/test_bench_pytest.py --benchmark-only
    pytest benchmarks/test_bench_pytest.py --benchmark-only -k "LSTM and fwdbwd" \
        --benchmark-json bench_out/pytest-benchmark.json
    pytest benchmarks/test_bench_pytest.py --benchmark-compare   # against a saved run

Cases: the same as ``fusedrnn-bench`` (``fusedrnn.bench.cases``): every cell, torch.nn and every
CPU backend that can run here, fwd (no grad) and fwdbwd, B=32, I=H=64, float32, at a few
sequence lengths. Each case first runs the sweep's parity check against the float64 anchor
and fails instead of timing when it does not hold; pytest-benchmark then times a rotating
set of inputs (warm-up round first). Groups are (cell, mode, T) so ``--benchmark-group-by=group``
prints torch.nn next to each backend.
"""

from __future__ import annotations

import functools
import time

import pytest
import torch

import fusedrnn
from fusedrnn.bench import cases
from fusedrnn.bench.machine import machine_info

B, H, I = 32, 64, 64
SEQ_LENS = (64, 512, 2048)
REFERENCE_MAX_T = 2048  # the reference is a Python loop: lower this to skip its long runs
CELLS = [c for c in cases.CELLS if c in cases.CLASSIC or hasattr(fusedrnn, c)]


def _params():
    out = []
    for cell in CELLS:
        backends, _ = cases.backends_for(cell, torch.device("cpu"), None)
        for backend in ["torch.nn", *backends]:
            for mode in cases.MODES:
                for T in SEQ_LENS:
                    marks = ()
                    if backend == "reference" and T > REFERENCE_MAX_T:
                        marks = pytest.mark.skip(reason=f"reference beyond T={REFERENCE_MAX_T}")
                    out.append(pytest.param(cell, backend, mode, T, marks=marks,
                                            id=f"{cell}-{backend}-{mode}-T{T}"))
    return out


@functools.lru_cache(maxsize=None)
def _setup(cell: str, T: int):
    """Weights, rotating input sets and float64 anchor results of one (cell, T)."""
    weights = cases.make_weights(cell, I, H, seed=0)
    sets = cases.input_sets(T, B, I, H, torch.float32, torch.device("cpu"), seed=0)
    model64, _ = cases.anchor_model(cell, I, H, weights, torch.device("cpu"), T, REFERENCE_MAX_T)
    return weights, sets, cases.anchor_outputs(model64, sets, cases.MODES)


@functools.lru_cache(maxsize=None)
def _base_error(cell: str, T: int, mode: str) -> float:
    """The same-dtype baseline's own error against the anchor (see the parity rule); the min
    cells' reference is not run beyond REFERENCE_MAX_T, where the dtype's floor is the bound."""
    if cell in cases.PARALLEL and T > REFERENCE_MAX_T:
        return 0.0
    weights, sets, anchor = _setup(cell, T)
    base = None if cell in cases.CLASSIC else "reference"
    model = cases.make_model(cell, base, I, H, weights, torch.float32, torch.device("cpu"))
    return cases.rel_error(cases.make_call(model, mode, sets)[1](0), anchor[mode])


@functools.lru_cache(maxsize=None)
def _machine() -> str:
    info = machine_info()
    return f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, triton {info['triton']}"


@pytest.mark.parametrize("cell, backend, mode, T", _params())
def test_case(benchmark, cell, backend, mode, T):
    cpu = torch.device("cpu")
    if backend == "torch.nn":
        layer = cases.PARALLEL.get(cell, cell)
        weights, sets, anchor = _setup(layer, T)
        model = cases.make_model(layer, None, I, H, weights, torch.float32, cpu)
        err, bound = None, None
    else:
        weights, sets, anchor = _setup(cell, T)
        model = cases.make_model(cell, backend, I, H, weights, torch.float32, cpu)
    call, run = cases.make_call(model, mode, sets)
    if backend != "torch.nn":
        err = cases.rel_error(run(0), anchor[mode])
        bound = cases.parity_bound(torch.float32, _base_error(cell, T, mode))
        assert err <= bound, f"PARITY FAIL: {cell} {backend} {mode} T={T}: {err:.2e} > {bound:.2e}"
    benchmark.group = f"{cell} {mode} T={T}"
    benchmark.extra_info.update(cell=cell, backend=backend, mode=mode, T=T, B=B, H=H, I=I,
                                parity_err=err, parity_bound=bound,
                                machine=_machine())
    rounds = max(3, min(20, int(2.0 / max(_estimate(call), 1e-4))))
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)


def _estimate(call) -> float:
    """Seconds of one call, to pick a round count that keeps a case near two seconds."""
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0
