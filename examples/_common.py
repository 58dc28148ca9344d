"""Shared plumbing of the examples: command line, layer choice, output folder, plotting."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import fusedrnn


def parser(description: str) -> argparse.ArgumentParser:
    """The options every example takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke-test run (< ~60 s on 2 cores; CI runs this)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                   help="folder for the PNG (default examples/results)")
    p.add_argument("--backend", default="auto",
                   help="fusedrnn backend: auto|reference|cpu|triton|cuda, or 'torch' for the "
                        "torch.nn layers (same models, for comparison)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    return p


def setup(args) -> Path:
    """Seed, threads, quiet the one-time backend fallback warning; returns the output folder."""
    torch.manual_seed(args.seed)
    if args.quick and not args.threads:
        args.threads = 1  # tiny tensors: threading costs more than it gives, and CI shares cores
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="fusedrnn: backend")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def describe(args) -> str:
    """One line naming what ran where, printed by every example."""
    return (f"backend={args.backend} device={args.device} torch={torch.__version__} "
            f"threads={torch.get_num_threads()} machine={platform.machine()} "
            f"python={sys.version.split()[0]} cpus={os.cpu_count()}")


#: cell name -> (fusedrnn class name, torch.nn class, extra constructor kwargs)
CELLS = {
    "tanh": ("RNN", nn.RNN, {"nonlinearity": "tanh"}),
    "relu": ("RNN", nn.RNN, {"nonlinearity": "relu"}),
    "lstm": ("LSTM", nn.LSTM, {}),
    "gru": ("GRU", nn.GRU, {}),
    "mingru": ("MinGRU", None, {}),
    "minlstm": ("MinLSTM", None, {}),
}


def cell_available(cell: str, backend: str) -> str | None:
    """None if ``cell`` can be built with ``backend``, else why not."""
    name, torch_cls, _ = CELLS[cell]
    if (backend != "torch" or torch_cls is None) and not hasattr(fusedrnn, name):
        return f"fusedrnn.{name} does not exist in this version"
    return None


def make_layer(cell: str, input_size: int, hidden_size: int, backend: str, **kw) -> nn.Module:
    """A recurrent layer of the given cell type, from fusedrnn (or torch.nn for 'torch')."""
    name, torch_cls, extra = CELLS[cell]
    kw = {**extra, **kw}
    if backend == "torch":
        if torch_cls is not None:
            return torch_cls(input_size, hidden_size, **kw)
        backend = "auto"  # fusedrnn's own cells (MinGRU, ...) have no torch.nn twin
    return getattr(fusedrnn, name)(input_size, hidden_size, backend=backend, **kw)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
