"""The drop-in layers under ``torch.compile``.

Dynamo refuses to trace modules that are instances of ``torch.nn.RNN``/``LSTM``/``GRU`` unless
``torch._dynamo.config.allow_rnn`` is set; ours subclass them (to be drop-in), so by default a
compiled model graph-breaks around the layer and runs it eagerly, as with torch.nn's own. With the
flag, the layers trace whole: one custom-op node per layer and direction (``fullgraph=True``).
Either way the numbers must equal eager mode's.
"""

from __future__ import annotations

import pytest
import torch

import fusedrnn
from conftest import TOL

BACKENDS = [b for b in ("cpu", "triton") if b in fusedrnn.available_backends()]


def _model(cls, backend):
    torch.manual_seed(0)
    return cls(5, 6, num_layers=2, bidirectional=True, batch_first=True, backend=backend)


def _run(fn, x):
    x = x.clone().requires_grad_()
    out, _ = fn(x)
    out.square().sum().backward()
    return out, x.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [fusedrnn.LSTM, fusedrnn.GRU], ids=["LSTM", "GRU"])
def test_fullgraph_with_allow_rnn(cls, backend):
    # config.patch, not monkeypatch: torch's config module is not a plain module (pytest 9.2's
    # monkeypatch deletes the attribute on undo)
    torch._dynamo.reset()
    m = _model(cls, backend)
    x = torch.randn(2, 3, 5)
    want, want_dx = _run(m, x)
    want_dw = m.weight_hh_l1_reverse.grad.clone()
    m.zero_grad()
    with torch._dynamo.config.patch(allow_rnn=True):
        got, got_dx = _run(torch.compile(m, fullgraph=True, backend="aot_eager"), x)
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    torch.testing.assert_close(got_dx, want_dx, **TOL[torch.float32])
    torch.testing.assert_close(m.weight_hh_l1_reverse.grad, want_dw, **TOL[torch.float32])


def test_default_graph_breaks_and_matches():
    """Without the flag: fullgraph fails the way it does for torch.nn.LSTM, a plain compile runs."""
    torch._dynamo.reset()
    m = _model(fusedrnn.LSTM, "cpu")
    x = torch.randn(2, 3, 5)
    with pytest.raises(Exception, match="RNN, GRU, or LSTM"):
        torch.compile(m, fullgraph=True, backend="aot_eager")(x)
    torch._dynamo.reset()
    want, want_dx = _run(m, x)
    got, got_dx = _run(torch.compile(m, backend="aot_eager"), x)
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    torch.testing.assert_close(got_dx, want_dx, **TOL[torch.float32])
