"""``torch.export`` of models with fusedrnn layers and cells: the ExportedProgram equals eager,
with every layer option, dynamic batch and sequence length, and after ``torch.export.save`` /
``load`` in a fresh process. (torch.nn's LSTM does not export: pytorch#123089, #120626.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.export import Dim
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

pytestmark = pytest.mark.skipif("cpu" not in fusedrnn.available_backends(),
                                reason="exports the C++ backend's custom op")


class Wrap(torch.nn.Module):
    """A layer or cell with every output flattened, hx passed when given."""

    def __init__(self, mod):
        super().__init__()
        self.mod = mod

    def forward(self, x, *hx):
        out = self.mod(x, (hx[0] if len(hx) == 1 else tuple(hx)) if hx else None)
        flat = []
        for o in out if isinstance(out, tuple) else (out,):
            flat.extend(o if isinstance(o, tuple) else (o,))
        return tuple(flat)


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        # the program runs the very kernels eager mode runs: equal, not merely close
        torch.testing.assert_close(g, w, rtol=0, atol=0)


CASES = {
    "LSTM-2l-bi-bf-hx": (fusedrnn.LSTM, dict(num_layers=2, bidirectional=True, batch_first=True), True),
    "LSTM-proj-hx": (fusedrnn.LSTM, dict(proj_size=3, bidirectional=True), True),
    "LSTM-nobias": (fusedrnn.LSTM, dict(bias=False), False),
    "GRU-2l-bi-bf-hx": (fusedrnn.GRU, dict(num_layers=2, bidirectional=True, batch_first=True), True),
    "RNN-relu-2l-hx": (fusedrnn.RNN, dict(num_layers=2, nonlinearity="relu"), True),
    "RNN-tanh-bi": (fusedrnn.RNN, dict(bidirectional=True), False),
}


def _case(name, B=3, T=4):
    cls, kw, with_hx = CASES[name]
    torch.manual_seed(0)
    layer = cls(5, 7, **kw)
    D = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    x = torch.randn(B, T, 5) if kw.get("batch_first") else torch.randn(T, B, 5)
    hx = ()
    if with_hx:
        hx = (torch.randn(D, B, kw.get("proj_size") or 7),)
        if cls is fusedrnn.LSTM:
            hx += (torch.randn(D, B, 7),)
    return Wrap(layer).eval(), (x, *hx), kw.get("batch_first", False)


@pytest.mark.parametrize("name", list(CASES))
def test_exported_program_equals_eager(name):
    model, args, _ = _case(name)
    ep = torch.export.export(model, args)
    _same(ep.module()(*args), model(*args))


@pytest.mark.parametrize("name", ["LSTM-2l-bi-bf-hx", "GRU-2l-bi-bf-hx", "RNN-relu-2l-hx"])
def test_dynamic_batch_and_sequence(name):
    model, args, batch_first = _case(name)
    B, T = Dim("B", min=2, max=128), Dim("T", min=2, max=128)
    x_dims = {0: B, 1: T} if batch_first else {0: T, 1: B}
    # *hx is one positional argument for dynamic_shapes: a tuple of per-tensor specs
    ep = torch.export.export(model, args, dynamic_shapes=(x_dims, ({1: B},) * (len(args) - 1)))
    for b, t in ((2, 9), (6, 2)):
        _, other, _ = _case(name, B=b, T=t)
        _same(ep.module()(*other), model(*other))


@pytest.mark.parametrize("cls", [fusedrnn.LSTMCell, fusedrnn.GRUCell, fusedrnn.RNNCell],
                         ids=lambda c: c.__name__)
def test_cell(cls):
    torch.manual_seed(0)
    model = Wrap(cls(5, 7))
    args = (torch.randn(3, 5), *(torch.randn(3, 7) for _ in range(2 if cls is fusedrnn.LSTMCell else 1)))
    ep = torch.export.export(model, args)
    _same(ep.module()(*args), model(*args))


_LOAD = """
import sys, torch, fusedrnn
ep = torch.export.load(sys.argv[1])
args = torch.load(sys.argv[2])
torch.save(ep.module()(*args), sys.argv[3])
"""


def test_save_load_in_a_fresh_process(tmp_path):
    model, args, _ = _case("LSTM-2l-bi-bf-hx")
    B, T = Dim("B", min=2, max=64), Dim("T", min=2, max=64)
    ep = torch.export.export(model, args, dynamic_shapes=({0: B, 1: T}, ({1: B}, {1: B})))
    torch.export.save(ep, tmp_path / "lstm.pt2")
    _, other, _ = _case("LSTM-2l-bi-bf-hx", B=5, T=6)
    torch.save(other, tmp_path / "args.pt")
    subprocess.run([sys.executable, "-c", _LOAD, str(tmp_path / "lstm.pt2"),
                    str(tmp_path / "args.pt"), str(tmp_path / "out.pt")], check=True, timeout=120)
    _same(torch.load(tmp_path / "out.pt"), model(*other))


class _Packed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = fusedrnn.LSTM(5, 7)

    def forward(self, x, lengths):
        return self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))[1]


def test_packed_input_is_a_clear_error():
    """A PackedSequence's batch_sizes are data the graph's shapes depend on: torch.export cannot
    take them (torch.nn's layers fail there as well); the layer says so."""
    with pytest.raises(NotImplementedError, match="PackedSequence input cannot be exported"):
        torch.export.export(_Packed(), (torch.randn(4, 3, 5), torch.tensor([4, 2, 3])))
