"""Packed input: the input projection runs on the live rows only (nn/rnn.py `_project`) when
enough of the padded batch is padding. Checked against torch.nn in float64, gradients included,
on both sides of the switch-over fraction."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn.nn import rnn as nn_rnn

CELLS = [("LSTM", torch.nn.LSTM, fusedrnn.LSTM), ("GRU", torch.nn.GRU, fusedrnn.GRU),
         ("RNN", torch.nn.RNN, fusedrnn.RNN)]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name,ref_cls,fused_cls", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("short", [2, 15], ids=["mostly_padding", "little_padding"])
def test_packed_projection_matches_torch_nn(backend, name, ref_cls, fused_cls, short):
    if backend == "cpu" and fusedrnn.ops.cpu.unavailable() is not None:
        pytest.skip("C++ extension not built")
    torch.manual_seed(0)
    T, B, I, H = 16, 6, 5, 7
    ref = ref_cls(I, H, num_layers=2, bidirectional=True).double()
    fused = fused_cls(I, H, num_layers=2, bidirectional=True, backend=backend).double()
    fused.load_state_dict(ref.state_dict())
    lengths = torch.tensor([T, short, T, short, T, short])  # unsorted: enforce_sorted=False
    live = _live_fraction(lengths, T)
    assert (live < nn_rnn._PACKED_PROJECTION_MAX_LIVE) == (short == 2)
    x = torch.randn(T, B, I, dtype=torch.float64)
    outs = []
    for m in (ref, fused):
        xi = x.clone().requires_grad_()
        packed = pack_padded_sequence(xi, lengths, enforce_sorted=False)
        y, h = m(packed)
        h = h[0] if isinstance(h, tuple) else h
        loss = (y.data ** 2).sum() + (h * 1.3).sum()
        grads = torch.autograd.grad(loss, [xi, *m.parameters()])
        outs.append((y.data, h, grads))
    (y0, h0, g0), (y1, h1, g1) = outs
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h1, h0, rtol=1e-10, atol=1e-12)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def _live_fraction(lengths: torch.Tensor, T: int) -> float:
    return float(lengths.clamp(max=T).sum()) / (T * len(lengths))
