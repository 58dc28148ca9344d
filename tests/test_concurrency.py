"""Concurrency: Python threads sharing modules, thread-count changes between calls, and
separate processes.

Threads and processes run exactly the computation of a sequential run on the same inputs at
the same intra-op thread count, so their results must be bitwise those of the sequential run:
any difference is shared mutable state (a cache, a workspace, a packed-weight buffer).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from run_utils import MODULES, assert_bitwise, fwd_bwd, make_batch, make_module

N_THREADS, ROUNDS = 8, 3


def test_threads_share_modules(backend):
    """8 threads, each running fwd+bwd of every module (shared) on its own inputs, 3 rounds."""
    mods = {n: make_module(n, backend) for n in MODULES}

    def work(tid):
        res = []
        for r in range(ROUNDS):
            for n, m in mods.items():
                # batch size and packing differ per thread, so threads hit different paths
                x, lengths = make_batch(B=1 + (tid * 5) % 19, T=4 + r, seed=100 * tid + r,
                                        packed=bool(tid % 2))
                res.append(fwd_bwd(m, x, lengths))
        return res

    want = [work(t) for t in range(N_THREADS)]
    got, errors = [None] * N_THREADS, []

    def run(t):
        try:
            got[t] = work(t)
        except BaseException as e:  # re-raised in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    for t in range(N_THREADS):
        for i, (a, b) in enumerate(zip(want[t], got[t], strict=True)):
            assert_bitwise(a, b, f"thread {t} call {i}")


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_set_num_threads_between_calls(backend, restore_threads):
    """Calls with the intra-op thread count changing between them; each equals the run made
    at the same count (bitwise), and a count above the machine's cores still works."""
    mods = {n: make_module(n, backend) for n in MODULES}
    x, lengths = make_batch(B=40, T=5, seed=3, packed=True)
    counts = (1, 2, 1, 4, 2, 1)
    first = {}
    for k in counts:
        torch.set_num_threads(k)
        for n, m in mods.items():
            res = fwd_bwd(m, x, lengths)
            if k in first.setdefault(n, {}):
                assert_bitwise(first[n][k], res, f"{n} at {k} threads")
            first[n][k] = res


_CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
from run_utils import MODULES, fwd_bwd, make_batch, make_module
torch.set_num_threads(1)
res = {{n: fwd_bwd(make_module(n, {backend!r}), *make_batch(B=17, T=6, seed=5, packed=True))
        for n in MODULES}}
torch.save(res, sys.argv[1])
"""


def test_two_processes_share_nothing(backend, tmp_path, restore_threads):
    """Two processes started together give bitwise the results of one run here."""
    script = _CHILD.format(tests=str(Path(__file__).parent), backend=backend)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    outs = [tmp_path / f"out{i}.pt" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(o)], env=env,
                              stderr=subprocess.PIPE, text=True) for o in outs]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    torch.set_num_threads(1)
    here = {n: fwd_bwd(make_module(n, backend), *make_batch(B=17, T=6, seed=5, packed=True))
            for n in MODULES}
    a, b = (torch.load(o) for o in outs)
    for n in MODULES:
        assert_bitwise(a[n], b[n], f"{n}: process 1 vs process 2")
        assert_bitwise(here[n], a[n], f"{n}: this process vs a child")



_THREADS_CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
from run_utils import MODULES, fwd_bwd, make_batch, make_module
before = torch.get_num_threads()
for n in MODULES:
    fwd_bwd(make_module(n, {backend!r}), *make_batch(B=1, T=5, seed=0))
print(before, torch.get_num_threads())
"""


def test_thread_count_left_as_found(backend):
    """A fresh process (thread count never set): calls must leave torch.get_num_threads() as
    they found it, or every later torch op (the user's, torch.nn's) runs with another count."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    script = _THREADS_CHILD.format(tests=str(Path(__file__).parent), backend=backend)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = proc.stdout.split()[-2:]
    assert after == before, f"torch.get_num_threads() was {before}, {after} after the calls"
