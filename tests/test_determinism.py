"""Determinism: outputs and gradients are bitwise identical across repeated runs, and for the
cpu backend across intra-op thread counts (torch.set_num_threads 1 vs 2).

Thread counts only change how work is split, never the order in which one element's sums
are taken; a kernel that splits a reduction (e.g. a weight gradient over the batch) across
threads breaks this, and so would a BLAS that picks a different kernel per thread count.
Batch composition is in test_batch_invariance.py.
"""

from __future__ import annotations

import pytest
import torch

import fusedrnn
from run_utils import MODULES, assert_bitwise, fwd_bwd, make_batch, make_module

# batch sizes around the 16-row blocks, one large enough that a batch split uses both threads
SHAPES = [(5, 3), (33, 7), (96, 4)]


@pytest.mark.parametrize("B,T", SHAPES, ids=[f"B{b}-T{t}" for b, t in SHAPES])
@pytest.mark.parametrize("name", list(MODULES))
def test_repeated_runs_bitwise(backend, name, B, T):
    m = make_module(name, backend)
    x, lengths = make_batch(B, T, seed=B + T, packed=True)
    first = fwd_bwd(m, x, lengths)
    for i in range(2):
        assert_bitwise(first, fwd_bwd(m, x, lengths), f"{name} run {i + 2}")


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.skipif("cpu" not in fusedrnn.available_backends(), reason="cpu backend not built")
@pytest.mark.parametrize("B,T", SHAPES, ids=[f"B{b}-T{t}" for b, t in SHAPES])
@pytest.mark.parametrize("name", list(MODULES))
def test_thread_count_bitwise_cpu(restore_threads, name, B, T):
    m = make_module(name, "cpu")
    x, lengths = make_batch(B, T, seed=B + T, packed=True)
    torch.set_num_threads(1)
    one = fwd_bwd(m, x, lengths)
    torch.set_num_threads(2)
    assert_bitwise(one, fwd_bwd(m, x, lengths), f"{name}: 1 vs 2 threads")
