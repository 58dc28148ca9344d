"""Property-based parity of the drop-in layers with torch.nn over random configurations.

Each example draws a cell, sizes that straddle the CPU micro-kernel's register blocks (up to 16
rows x 16-wide unit blocks: H and B just below, at and above 16, 32, 64; G*H rarely a multiple
of 16), layers, directions, batch_first, the input form (tensor, packed with sorted / unsorted /
all-equal / all-1 lengths), hx given or not, the dtype and the backend; then compares outputs,
final states and every gradient with torch.nn run in float64 (the exact anchor), at the
tolerance of the dtype ours ran in (conftest.TOL).

Profiles: conftest.py ("ci" default, HYPOTHESIS_PROFILE=deep for long local runs). A failure
prints the drawn configuration (note()) and the shrunk example's reproduction blob.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from conftest import LAYER_BACKENDS, TOL
from layer_utils import CELLS, assert_close_named, flat

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

#: hidden sizes at and around the register-block edges (16-wide unit blocks, 16-row blocks)
HIDDEN = (1, 2, 7, 15, 16, 17, 33, 64, 65)
BATCH = (1, 2, 3, 5, 7, 16, 17, 33)
INPUT = (1, 3, 5, 16, 17)
LENGTH_KINDS = ("tensor", "sorted", "unsorted", "all_equal", "all_one")


@st.composite
def layer_configs(draw):
    cell = draw(st.sampled_from(("rnn_tanh", "rnn_relu", "lstm", "gru")))
    H = draw(st.sampled_from(HIDDEN))
    proj = 0
    if cell == "lstm" and H > 1 and draw(st.booleans()):
        proj = draw(st.integers(1, H - 1))
    big = H * (2 if proj == 0 else 1) >= 64
    cfg = dict(
        cell=cell, H=H, proj=proj,
        I=draw(st.sampled_from(INPUT)),
        layers=draw(st.integers(1, 2)),
        bidir=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bias=draw(st.booleans()),
        B=draw(st.sampled_from(BATCH)),
        # long sequences with the largest sizes would make each example slow without reaching
        # new kernel paths: T's edges (1, 2, odd) matter, not its size
        T=draw(st.integers(1, 6 if big else 12)),
        kind=draw(st.sampled_from(LENGTH_KINDS)),
        with_hx=draw(st.booleans()),
        dtype=draw(st.sampled_from((torch.float64, torch.float32))),
        backend=draw(st.sampled_from(LAYER_BACKENDS)),
        seed=draw(st.integers(0, 2**16)),
    )
    note(f"config: {cfg}")
    return cfg


def _lengths(kind, T, B, gen):
    if kind == "all_equal":
        return torch.full((B,), T, dtype=torch.int64)
    if kind == "all_one":
        return torch.ones(B, dtype=torch.int64)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[torch.randint(0, B, (1,), generator=gen)] = T  # packing needs one full row
    return lengths.sort(descending=True).values if kind == "sorted" else lengths


def _module_pair(c, backend):
    tcls, fcls, extra = CELLS[c["cell"]]
    kw = dict(extra, num_layers=c["layers"], bias=c["bias"], bidirectional=c["bidir"],
              batch_first=c["batch_first"])
    if c["proj"]:
        kw["proj_size"] = c["proj"]
    torch.manual_seed(c["seed"])
    ref = tcls(c["I"], c["H"], dtype=torch.float64, **kw)
    ours = fcls(c["I"], c["H"], dtype=c["dtype"], backend=backend, **kw)
    with torch.no_grad():
        # weights rounded to ours' dtype first, so the float64 anchor sees the same values
        for p in ref.parameters():
            p.copy_(p.to(c["dtype"]))
        ours.load_state_dict({k: v.to(c["dtype"]) for k, v in ref.state_dict().items()})
    return ref, ours


def _inputs(c, dtype):
    """(build, x, hx) in ``dtype``: build turns a leaf x into the module input."""
    gen = torch.Generator().manual_seed(c["seed"] + 1)
    T, B, I = c["T"], c["B"], c["I"]
    if c["kind"] == "tensor":
        shape = (B, T, I) if c["batch_first"] else (T, B, I)
        x = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)
        build = lambda t: t  # noqa: E731
    else:
        lengths = _lengths(c["kind"], T, B, gen)
        enforce = c["kind"] != "unsorted"
        note(f"lengths: {lengths.tolist()}")
        x = torch.randn(T, B, I, generator=gen, dtype=torch.float64).to(dtype)
        build = lambda t: pack_padded_sequence(t, lengths, enforce_sorted=enforce)  # noqa: E731
    hx = None
    if c["with_hx"]:
        d = 2 if c["bidir"] else 1
        h_out = c["proj"] or c["H"]
        h = torch.randn(c["layers"] * d, B, h_out, generator=gen, dtype=torch.float64) * 0.5
        hx = h.to(dtype)
        if c["cell"] == "lstm":
            cc = torch.randn(c["layers"] * d, B, c["H"], generator=gen, dtype=torch.float64)
            hx = (hx, cc.to(dtype))
    return build, x, hx


def _run(m, build, x, hx, seed):
    """Forward, a loss with random float64 upstream gradients rounded to the run's dtype (so
    a float32 run and its float64 anchor see the same loss), backward; outputs and grads."""
    dtype = x.dtype
    if hx is not None:
        hx = tuple(h.detach().clone().requires_grad_() for h in hx) if isinstance(hx, tuple) \
            else hx.detach().clone().requires_grad_()
    leaf = x.detach().clone().requires_grad_()
    out, hidden = m(build(leaf), hx)
    outs = flat(out, hidden)
    g = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype)).sum()
               for t in outs)
    leaves = [leaf, *m.parameters(), *(() if hx is None else hx if isinstance(hx, tuple)
                                       else (hx,))]
    names = ["input", *(f"param.{n}" for n, _ in m.named_parameters()),
             *(f"hx{i}" for i in range(len(leaves) - 1 - len(list(m.parameters()))))]
    grads = torch.autograd.grad(loss, leaves)
    return ({f"out{i}": t.detach() for i, t in enumerate(outs)}, dict(zip(names, grads)))


def _as64(hx):
    if hx is None:
        return None
    return tuple(h.double() for h in hx) if isinstance(hx, tuple) else hx.double()


@given(c=layer_configs())
def test_layers_match_torch_nn(c):
    ref, ours = _module_pair(c, c["backend"])
    build, x, hx = _inputs(c, c["dtype"])
    out_ref, g_ref = _run(ref, build, x.double(), _as64(hx), c["seed"])
    out_ours, g_ours = _run(ours, build, x, hx, c["seed"])
    for name, t in {**out_ours, **g_ours}.items():
        assert t.dtype == c["dtype"], (name, t.dtype)
    as64 = lambda d: {k: v.double() for k, v in d.items()}  # noqa: E731
    assert_close_named(out_ref, as64(out_ours), TOL[c["dtype"]], "output")
    assert_close_named(g_ref, as64(g_ours), TOL[c["dtype"]], "grad")


CELL_CLASSES = {"rnn_tanh": ("RNNCell", {"nonlinearity": "tanh"}),
                "rnn_relu": ("RNNCell", {"nonlinearity": "relu"}),
                "lstm": ("LSTMCell", {}), "gru": ("GRUCell", {})}


@given(cell=st.sampled_from(tuple(CELL_CLASSES)), H=st.sampled_from(HIDDEN),
       I=st.sampled_from(INPUT), B=st.sampled_from(BATCH), bias=st.booleans(),
       with_hx=st.booleans(), grad=st.booleans(),
       dtype=st.sampled_from((torch.float64, torch.float32)),
       backend=st.sampled_from(LAYER_BACKENDS), seed=st.integers(0, 2**16))
def test_cells_match_torch_nn(cell, H, I, B, bias, with_hx, grad, dtype, backend, seed):
    """The cells, with grad (recurrence op, T=1) and without (the cpu backend's fused step)."""
    name, kw = CELL_CLASSES[cell]
    torch.manual_seed(seed)
    ref = getattr(torch.nn, name)(I, H, bias=bias, dtype=torch.float64, **kw)
    ours = getattr(fusedrnn, name)(I, H, bias=bias, dtype=dtype, backend=backend, **kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(dtype))
    ours.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, I, generator=g, dtype=torch.float64).to(dtype)
    hx = None
    if with_hx:
        mk = lambda: torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
        hx = (mk(), mk()) if name == "LSTMCell" else mk()
    with torch.set_grad_enabled(grad):
        want = ref(x.double(), _as64(hx))
        got = ours(x, hx)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    for a, b in zip(want, got, strict=True):
        assert b.dtype == dtype
        torch.testing.assert_close(b.double(), a, **TOL[dtype])
    if grad:
        ups = [torch.randn(a.shape, generator=g, dtype=torch.float64).to(dtype) for a in want]
        gw = torch.autograd.grad(sum((a * u.double()).sum() for a, u in zip(want, ups)),
                                 list(ref.parameters()))
        gg = torch.autograd.grad(sum((b * u).sum() for b, u in zip(got, ups)),
                                 list(ours.parameters()))
        for a, b in zip(gw, gg, strict=True):
            torch.testing.assert_close(b.double(), a, **TOL[dtype])
