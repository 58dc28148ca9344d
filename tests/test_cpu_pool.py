"""The CPU ops' cache of large buffers (csrc/cpu/pool.cpp): reuse, limit, what the profiler sees."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fusedrnn
from fusedrnn.bench.timing import peak_memory

C = fusedrnn._ext._C
pytestmark = pytest.mark.skipif("cpu" not in fusedrnn.available_backends(),
                                reason="the CPU extension is not built")


@pytest.fixture
def pool():
    stats = C._cpu_pool_stats()
    C._cpu_pool_empty()
    yield
    C._cpu_pool_set_limit(stats["limit_bytes"])
    C._cpu_pool_empty()


def _linear(M=1024, K=64, N=512):  # an output of M * N * 4 = 2 MiB
    torch.manual_seed(0)
    return torch.randn(M, K), torch.randn(N, K)


def test_a_freed_block_is_reused(pool):
    a, w = _linear()
    first = torch.ops.fusedrnn.rows_linear(a, w, None)
    want = first.clone()
    ptr = first.data_ptr()
    del first
    s0 = C._cpu_pool_stats()
    assert s0["cached_blocks"] == 1 and s0["cached_bytes"] >= 2 << 20
    again = torch.ops.fusedrnn.rows_linear(a, w, None)
    s1 = C._cpu_pool_stats()
    assert again.data_ptr() == ptr
    assert s1["hits"] == s0["hits"] + 1 and s1["cached_blocks"] == 0
    assert torch.equal(again, want)
    torch.testing.assert_close(again, (a.double() @ w.double().t()).float())  # float32 tols


def test_live_blocks_are_not_shared(pool):
    a, w = _linear()
    outs = [torch.ops.fusedrnn.rows_linear(a, w, None) for _ in range(3)]
    assert len({o.data_ptr() for o in outs}) == 3


def test_limit_zero_caches_nothing(pool):
    C._cpu_pool_set_limit(0)
    a, w = _linear()
    for _ in range(3):
        torch.ops.fusedrnn.rows_linear(a, w, None)
    assert C._cpu_pool_stats()["cached_bytes"] == 0
    with pytest.raises(ValueError, match="bytes must be >= 0"):
        C._cpu_pool_set_limit(-1)


def test_the_profiler_sees_pooled_buffers(pool):
    """Peak-memory measurements (benchmarks/bench_cpu.py) count our live buffers: a cached
    block handed out again is reported again."""
    a, w = _linear(M=4096)  # 8 MiB out
    torch.ops.fusedrnn.rows_linear(a, w, None)  # now cached
    peak = peak_memory(lambda: torch.ops.fusedrnn.rows_linear(a, w, None), torch.device("cpu"))
    assert peak >= 4096 * 512 * 4


def test_training_memory_is_the_same_with_and_without_the_cache(pool):
    torch.manual_seed(0)
    m = fusedrnn.LSTM(32, 64, backend="cpu")
    x = torch.randn(128, 16, 32, requires_grad=True)

    def step():
        y, _ = m(x)
        y.sum().backward()

    peaks = []
    for limit in (0, 512 << 20):
        C._cpu_pool_set_limit(limit)
        step()
        peaks.append(peak_memory(step, torch.device("cpu")))
    assert peaks[0] == peaks[1]


def test_bad_limit_in_the_environment_is_a_clear_error():
    code = ("import torch, fusedrnn\n"
            "try:\n"
            "    torch.ops.fusedrnn.rows_linear(torch.randn(1024, 64), torch.randn(512, 64), None)\n"
            "except RuntimeError as e:\n"
            "    print('ERR', e)\n")
    env = dict(os.environ, FUSEDRNN_CPU_POOL_MB="lots")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "FUSEDRNN_CPU_POOL_MB must be a whole number of MiB >= 0, got 'lots'" in out.stdout
