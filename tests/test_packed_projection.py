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


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name,ref_cls,fused_cls", CELLS, ids=[c[0] for c in CELLS])
def test_inference_projection_buffer(backend, name, ref_cls, fused_cls):
    """Without autograd the layers project into a reused per-thread buffer (`_inference_buffer`):
    results equal the autograd path's bitwise, across shapes that grow and shrink the buffer,
    under no_grad and inference_mode, and from several threads at once."""
    import threading

    if backend == "cpu" and fusedrnn.ops.cpu.unavailable() is not None:
        pytest.skip("C++ extension not built")
    torch.manual_seed(1)
    m = fused_cls(6, 9, num_layers=2, bidirectional=True, backend=backend)
    xs = [torch.randn(T, B, 6) for T, B in ((7, 3), (20, 5), (4, 2))]
    want = [m(x)[0].detach() for x in xs]  # grad mode: F.linear, no buffer
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            for x, w in zip(xs, want):
                assert torch.equal(m(x)[0], w)
    got, errors = {}, []

    def work(i):
        try:
            with torch.no_grad():
                for _ in range(5):
                    got[i] = [m(x)[0] for x in xs]
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(4):
        for g, w in zip(got[i], want):
            assert torch.equal(g, w)
