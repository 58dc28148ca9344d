"""Data-parallel training with fusedrnn layers on CPU (gloo, 2 processes on loopback): N steps of
DDP, and of FSDP2's ``fully_shard``, give the parameters of single-process training on the
whole batch. Each run is a subprocess (``torch.multiprocessing.spawn`` inside), bounded by a
timeout."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import fusedrnn

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

STEPS, BATCH = 3, 6

_WORKER = '''
import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
sys.path.insert(0, {tests!r})
from test_distributed import make_model, batch, train

def wrap(model, mode):
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard
    fully_shard(model.rnn)  # FSDP2: parameters become DTensors sharded over the 2 ranks
    return fully_shard(model)

def run(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x, y = batch()
    half = x.shape[1] // 2  # time-major: each rank takes its half of the batch dimension
    for mode in ("ddp", "fsdp2"):
        model = wrap(make_model(), mode)
        train(model, x[:, rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half])
        # a collective for FSDP2 (full_tensor gathers the shards): every rank takes part
        params = {{n.replace("module.", ""): (p.full_tensor() if hasattr(p, "full_tensor")
                                             else p).detach().clone()
                  for n, p in model.named_parameters()}}
        if rank == 0:
            torch.save(params, os.path.join(out_dir, mode + ".pt"))
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(run, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2, join=True)
'''


def make_model():
    torch.manual_seed(0)
    return _Model()


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = fusedrnn.LSTM(4, 8, num_layers=2, bidirectional=True)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][-1])


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, BATCH, 4, generator=g), torch.randint(0, 3, (BATCH,), generator=g)


def train(model, x, y):
    """STEPS of SGD on the mean loss of (x, y): the mean over one rank's half, averaged by DDP
    over both ranks, is the mean over the whole batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process():
    model = make_model()
    train(model, *batch())
    return dict(model.named_parameters())


@pytest.fixture(scope="module")
def two_process_params(tmp_path_factory):
    """Both trainings in one spawned pair of processes (each start imports torch): mode -> params."""
    tmp = tmp_path_factory.mktemp("dist")
    script = tmp / "worker.py"
    script.write_text(_WORKER.format(tests=str(Path(__file__).parent)))
    subprocess.run([sys.executable, str(script), str(_free_port()), str(tmp)], check=True,
                   timeout=180)
    return {mode: torch.load(tmp / f"{mode}.pt") for mode in ("ddp", "fsdp2")}


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_processes_equal_one(mode, two_process_params):
    got, want = two_process_params[mode], _single_process()
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name].detach(), rtol=1e-6, atol=1e-6,
                                   msg=lambda m: f"{name}: {m}")
    # training moved the parameters: equality is not that of the initial weights
    init = dict(make_model().named_parameters())
    assert any((got[n] - init[n]).abs().max() > 1e-3 for n in init)
