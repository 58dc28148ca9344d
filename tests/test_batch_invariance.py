"""Batch invariance: a sequence's outputs, final states and input gradient are bitwise the same
whether it runs alone or as one row of a batch of 32 (at positions 0, 5 and 31, with and without
packing).

Rows never interact in an RNN layer, so only the kernels' choice of blocking or summation order
by batch size can make them differ: a per-step BLAS GEMM whose M is the batch picks different
kernels for M = 1 and M = 32. The CPU backend's register-blocked micro-kernel is meant to make
this hold (its reductions run over units, never over rows); this file is what checks it.
Weight gradients are sums over the batch and are not compared.

Two levels: the recurrence op alone (what the CPU backend controls), and the drop-in layer, which
also depends on the input projection F.linear(x, W_ih) over T*B rows (torch's GEMM). cpu backend
only: the reference backend is a torch loop of batched matmuls and makes no such promise.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn.ops.cells import GATES, TORCH_MODES
from run_utils import MODULES, make_batch, make_module

pytestmark = pytest.mark.skipif("cpu" not in fusedrnn.available_backends(),
                                reason="the cpu backend is not built")

B, T = 32, 6


def _forward(m, x, lengths):
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, hidden = m(inp)
    if lengths is not None:  # back to [T, B, *] so rows can be picked out
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=x.size(0))
    return [out, *(hidden if isinstance(hidden, tuple) else (hidden,))]


def _run(m, x, lengths, ups):
    """Outputs (y, h_n[, c_n]) and d input of sum(outputs * ups)."""
    leaf = x.detach().clone().requires_grad_()
    outs = _forward(m, leaf, lengths)
    loss = sum((o * u).sum() for o, u in zip(outs, ups))
    (dx,) = torch.autograd.grad(loss, [leaf])
    return [o.detach() for o in outs] + [dx]


@pytest.mark.parametrize("packed", [False, True], ids=["tensor", "packed"])
@pytest.mark.parametrize("row", [0, 5, 31])
@pytest.mark.parametrize("name", list(MODULES))
def test_layer_row_alone_equals_row_in_batch(name, row, packed):
    m = make_module(name, "cpu")
    x, lengths = make_batch(B, T, seed=11, packed=packed)
    if packed:
        lengths[row] = T - 2  # a shorter row inside a batch whose longest is T
        lengths[(row + 1) % B] = T
    with torch.no_grad():
        shapes = [o.shape for o in _forward(m, x, lengths)]
    g = torch.Generator().manual_seed(1)
    ups = [torch.randn(s, generator=g) for s in shapes]
    batch = _run(m, x, lengths, ups)
    L = None if lengths is None else lengths[row:row + 1]
    T1 = T if L is None else int(L)
    alone = _run(m, x[:T1, row:row + 1], L,
                 [u[:T1, row:row + 1] if i == 0 else u[:, row:row + 1] for i, u in enumerate(ups)])
    names = ["y", "h_n", "c_n"][:len(batch) - 1] + ["d_input"]
    for n, a, b in zip(names, alone, batch):
        b_row = b[:T1, row:row + 1] if n in ("y", "d_input") else b[:, row:row + 1]
        assert torch.equal(a, b_row), \
            f"{name} {n}: row {row} alone vs in a batch of {B}: max |diff| " \
            f"{(a - b_row).abs().max().item():.3g}"


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("H,P", [(7, 0), (17, 0), (33, 0), (65, 0), (33, 5)], ids=str)
@pytest.mark.parametrize("mode", list(TORCH_MODES))
def test_op_row_alone_equals_row_in_batch(mode, H, P, with_lengths, reverse):
    if P and mode != "LSTM":
        pytest.skip("projection is LSTM only")
    g = torch.Generator().manual_seed(H + P)
    G, Ho = GATES[mode], P or H
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    xw, w, b, h0 = r(T, B, G * H), r(G * H, Ho) * Ho ** -0.5, r(G * H), r(B, Ho)
    c0 = r(B, H) if mode == "LSTM" else None
    w_hr = r(P, H) * H ** -0.5 if P else None
    lengths = torch.randint(1, T + 1, (B,), generator=g) if with_lengths else None
    ups = [r(T, B, Ho), r(B, Ho), r(B, H)]

    def run(rows):
        leaves = [t[:, rows] if t.dim() == 3 else t[rows] for t in (xw, h0)]
        leaves = [t.clone().requires_grad_() for t in leaves]
        c = None if c0 is None else c0[rows].clone().requires_grad_()
        L = None if lengths is None else lengths[rows]
        y, h, cT = fusedrnn.ops.cpu.recurrence(mode, leaves[0], w, b, leaves[1], c, L, reverse,
                                               w_hr)
        outs = [y, h] + ([cT] if cT is not None else [])
        loss = sum((o * (u[:, rows] if u.dim() == 3 else u[rows])).sum()
                   for o, u in zip(outs, ups))
        ins = leaves + ([c] if c is not None else [])
        return [o.detach() for o in outs] + list(torch.autograd.grad(loss, ins))

    batch = run(slice(None))
    for row in (0, 5, 31):
        alone = run(slice(row, row + 1))
        for i, (a, bt) in enumerate(zip(alone, batch)):
            b_row = bt[:, row:row + 1] if bt.dim() == 3 else bt[row:row + 1]
            assert torch.equal(a, b_row), \
                f"{mode} result {i}: row {row} alone vs in a batch of {B}: max |diff| " \
                f"{(a - b_row).abs().max().item():.3g}"
