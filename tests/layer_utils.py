"""Helpers shared by the drop-in layer tests: twin modules, inputs, losses, comparisons."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn

#: (id, torch.nn class, fusedrnn class, extra constructor kwargs)
CELLS = {
    "rnn_tanh": (torch.nn.RNN, fusedrnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, fusedrnn.RNN, {"nonlinearity": "relu"}),
    "lstm": (torch.nn.LSTM, fusedrnn.LSTM, {}),
    "lstm_proj": (torch.nn.LSTM, fusedrnn.LSTM, {"proj_size": 2}),
    "gru": (torch.nn.GRU, fusedrnn.GRU, {}),
}


def twins(cell, input_size, hidden_size, backend="reference", dtype=torch.float64, **kw):
    """A torch.nn module and a fusedrnn module with identical weights."""
    tcls, fcls, extra = CELLS[cell]
    kw = {**extra, **kw}
    ref = tcls(input_size, hidden_size, dtype=dtype, **kw)
    ours = fcls(input_size, hidden_size, dtype=dtype, backend=backend, **kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def hidden_shapes(m, batch):
    d = 2 if m.bidirectional else 1
    h_out = m.proj_size if m.proj_size > 0 else m.hidden_size
    shapes = [(m.num_layers * d, batch, h_out)]
    if isinstance(m, torch.nn.LSTM):
        shapes.append((m.num_layers * d, batch, m.hidden_size))
    return shapes


def make_hx(m, batch, dtype, gen):
    hs = [torch.randn(*s, dtype=dtype, generator=gen) for s in hidden_shapes(m, batch)]
    return tuple(hs) if isinstance(m, torch.nn.LSTM) else hs[0]


def make_input(form, T, B, I, batch_first, dtype, gen):
    """Returns a function building the module input (tensor or PackedSequence) from a leaf
    tensor, and that leaf's data; each run builds its own graph from a fresh leaf."""
    if form == "tensor":
        shape = (B, T, I) if batch_first else (T, B, I)
        return (lambda x: x), torch.randn(*shape, dtype=dtype, generator=gen)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    if form == "sorted":
        lengths = lengths.sort(descending=True).values
    x = torch.randn(T, B, I, dtype=dtype, generator=gen)
    return (lambda x: pack_padded_sequence(x, lengths, enforce_sorted=(form == "sorted"))), x


def flat(out, hidden):
    """Every tensor a layer returned, in a fixed order."""
    y = out.data if isinstance(out, PackedSequence) else out
    hs = list(hidden) if isinstance(hidden, tuple) else [hidden]
    return [y, *hs]


def loss_of(tensors, gen):
    """A loss with random upstream gradients on the output and on every final state."""
    total = 0
    for t in tensors:
        total = total + (t * torch.randn(t.shape, dtype=t.dtype, generator=gen)).sum()
    return total


def assert_close_named(a: dict, b: dict, tol: dict, what: str):
    assert a.keys() == b.keys(), f"{what}: different names {a.keys() ^ b.keys()}"
    for name in a:
        torch.testing.assert_close(b[name], a[name], **tol, msg=lambda m: f"{what} {name}: {m}")


def run_and_grads(m, build, x, hx, seed):
    """Forward, a random-upstream loss, backward; returns outputs and grads by name."""
    for p in m.parameters():
        p.grad = None
    if hx is not None:
        hx = tuple(h.detach().clone().requires_grad_() for h in hx) if isinstance(hx, tuple) \
            else hx.detach().clone().requires_grad_()
    leaf = x.detach().clone().requires_grad_()
    out, hidden = m(build(leaf), hx)
    outs = flat(out, hidden)
    loss_of(outs, torch.Generator().manual_seed(seed)).backward()
    grads = {f"param.{n}": p.grad for n, p in m.named_parameters()}
    grads["input"] = leaf.grad
    if hx is not None:
        for i, h in enumerate(hx if isinstance(hx, tuple) else (hx,)):
            grads[f"hx{i}"] = h.grad
    return {f"out{i}": t.detach() for i, t in enumerate(outs)}, grads
