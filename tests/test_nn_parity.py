"""The drop-in layers against torch.nn: outputs, final states and every gradient, by name.

Runs once per available CPU backend (the ``backend`` fixture of conftest.py).
"""

import itertools

import pytest
import torch

from conftest import TOL
from layer_utils import CELLS, assert_close_named, make_hx, make_input, run_and_grads, twins

FORMS = ("tensor", "sorted", "unsorted")
GRID = list(itertools.product(
    CELLS, (True, False), (False, True), (False, True), (1, 2), (False, True), FORMS,
))


def _ids(p):
    cell, bias, bidir, bf, layers, h0, form = p
    return (f"{cell}-{'bias' if bias else 'nobias'}-{'bi' if bidir else 'uni'}-"
            f"{'bf' if bf else 'tf'}-L{layers}-{'h0' if h0 else 'noh0'}-{form}")


def _check(backend, dtype, cell, bias, bidir, batch_first, layers, with_h0, form,
           T=5, B=4, I=3, H=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ref, ours = twins(cell, I, H, backend=backend, dtype=dtype, num_layers=layers, bias=bias,
                      bidirectional=bidir, batch_first=batch_first)
    build, x = make_input(form, T, B, I, batch_first, dtype, gen)
    hx = make_hx(ref, B, dtype, gen) if with_h0 else None
    out_ref, g_ref = run_and_grads(ref, build, x, hx, seed)
    out_ours, g_ours = run_and_grads(ours, build, x, hx, seed)
    tol = TOL[dtype]
    assert_close_named(out_ref, out_ours, tol, "output")
    assert_close_named(g_ref, g_ours, tol, "grad")


@pytest.mark.parametrize("params", GRID, ids=[_ids(p) for p in GRID])
def test_parity_float64(backend, params, nan_poison):
    _check(backend, torch.float64, *params)


# float32 on a slice of the grid: every cell and input form, both directions, 2 layers
GRID32 = [p for p in GRID if p[1] and p[3] is False and p[4] == 2 and p[5]]


@pytest.mark.parametrize("params", GRID32, ids=[_ids(p) for p in GRID32])
def test_parity_float32(backend, params):
    _check(backend, torch.float32, *params)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("T,B,H", [(1, 1, 13), (63, 5, 13), (7, 1, 1)], ids=str)
def test_parity_odd_sizes(backend, cell, T, B, H):
    _check(backend, torch.float64, cell, True, True, False, 1, True, "unsorted", T=T, B=B,
           I=4, H=max(H, 3) if cell == "lstm_proj" else H)


@pytest.mark.parametrize("cls,tcls,kw", [
    ("RNNCell", torch.nn.RNNCell, {}),
    ("RNNCell", torch.nn.RNNCell, {"nonlinearity": "relu"}),
    ("LSTMCell", torch.nn.LSTMCell, {}),
    ("GRUCell", torch.nn.GRUCell, {}),
    ("GRUCell", torch.nn.GRUCell, {"bias": False}),
], ids=["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_nobias"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
def test_cells_parity(backend, cls, tcls, kw, batched, with_hx):
    import fusedrnn

    torch.manual_seed(0)
    ref = tcls(4, 6, dtype=torch.float64, **kw)
    ours = getattr(fusedrnn, cls)(4, 6, dtype=torch.float64, backend=backend, **kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    shape = (3,) if batched else ()
    x = torch.randn(*shape, 4, dtype=torch.float64, requires_grad=True)
    hx = None
    if with_hx:
        mk = lambda: torch.randn(*shape, 6, dtype=torch.float64, requires_grad=True)  # noqa: E731
        hx = (mk(), mk()) if cls == "LSTMCell" else mk()
    outs = []
    for m in (ref, ours):
        out = m(x, hx)
        out = out if isinstance(out, tuple) else (out,)
        leaves = [x, *m.parameters(), *((hx if isinstance(hx, tuple) else (hx,)) if with_hx else ())]
        gs = torch.autograd.grad(sum((o * (i + 1.5)).sum() for i, o in enumerate(out)), leaves,
                                 allow_unused=True)
        outs.append((out, gs))
    (o_ref, g_ref), (o_ours, g_ours) = outs
    for a, b in zip(o_ref, o_ours, strict=True):
        torch.testing.assert_close(b, a, **TOL[torch.float64])
    for a, b in zip(g_ref, g_ours, strict=True):
        torch.testing.assert_close(b, a, **TOL[torch.float64])


@pytest.mark.parametrize("name,kw", [("RNNCell", {}), ("RNNCell", {"nonlinearity": "relu"}),
                                     ("LSTMCell", {}), ("GRUCell", {}), ("GRUCell", {"bias": False})],
                         ids=["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_nobias"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_cells_streaming_no_grad(backend, name, kw, dtype):
    """Inference steps (no grad; the cpu backend's single-op path) over a short stream."""
    import fusedrnn

    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(5, 7, dtype=dtype, **kw)
    ours = getattr(fusedrnn, name)(5, 7, dtype=dtype, backend=backend, **kw)
    ours.load_state_dict(ref.state_dict())
    xs = torch.randn(6, 2, 5, dtype=dtype)
    s_ref = s_ours = None
    with torch.no_grad():
        for x in xs:
            s_ref, s_ours = ref(x, s_ref), ours(x, s_ours)
            for a, b in zip(s_ref if isinstance(s_ref, tuple) else (s_ref,),
                            s_ours if isinstance(s_ours, tuple) else (s_ours,), strict=True):
                torch.testing.assert_close(b, a, **TOL[dtype])
        one = ours(xs[0, 0])  # unbatched
        want = ref(xs[0, 0])
    for a, b in zip(want if isinstance(want, tuple) else (want,),
                    one if isinstance(one, tuple) else (one,), strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, **TOL[dtype])
