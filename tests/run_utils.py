"""Shared pieces of the concurrency, determinism and batch-invariance tests: a fixed set of
modules and one forward+backward that returns every output and gradient without touching
``.grad`` (so that threads sharing a module do not race on its accumulation)."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

#: id -> (class name, constructor kwargs); sizes cross the 16-row / 16-unit register blocks
MODULES = {
    "rnn_tanh": ("RNN", dict(nonlinearity="tanh", num_layers=2)),
    "rnn_relu": ("RNN", dict(nonlinearity="relu", bidirectional=True)),
    "lstm": ("LSTM", dict(num_layers=2, bidirectional=True)),
    "lstm_proj": ("LSTM", dict(proj_size=7)),
    "gru": ("GRU", dict(num_layers=2, bidirectional=True)),
}
I, H = 5, 33


def make_module(name, backend, lib=fusedrnn, seed=0):
    cls, kw = MODULES[name]
    torch.manual_seed(seed)
    extra = {} if lib is torch.nn else {"backend": backend}
    return getattr(lib, cls)(I, H, **kw, **extra)


def make_batch(B, T, seed, packed=False):
    """(x [T, B, I], lengths [B] | None) from a seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g) if packed else None
    return x, lengths


def fwd_bwd(m, x, lengths=None):
    """Outputs and the gradients of a fixed loss w.r.t. the input and every parameter."""
    leaf = x.detach().clone().requires_grad_()
    inp = leaf if lengths is None else pack_padded_sequence(leaf, lengths, enforce_sorted=False)
    out, hidden = m(inp)
    y = out.data if lengths is not None else out
    hs = list(hidden) if isinstance(hidden, tuple) else [hidden]
    outs = [y, *hs]
    loss = sum((o * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in outs)
    grads = torch.autograd.grad(loss, [leaf, *m.parameters()])
    return [o.detach() for o in outs] + list(grads)


def assert_bitwise(a, b, what):
    assert len(a) == len(b), what
    for i, (s, t) in enumerate(zip(a, b)):
        assert s.shape == t.shape and s.dtype == t.dtype, (what, i)
        if not torch.equal(s, t):
            d = (s - t).abs().max().item()
            raise AssertionError(f"{what}: result {i} not bitwise equal (max |diff| {d:.3g})")
