"""recurrent_grad_clip: the gradient carried back through the recurrence is clamped at every
step; checked against a hand-written loop of torch.nn cells with hooks that clamp by hand."""

import pytest
import torch

import fusedrnn
from conftest import TOL
from fusedrnn.ops import GATES, recurrence_ref
from fusedrnn.ops.cells import TORCH_MODES

CELL = {"RNN_TANH": (torch.nn.RNNCell, {}), "RNN_RELU": (torch.nn.RNNCell, {"nonlinearity": "relu"}),
        "LSTM": (torch.nn.LSTMCell, {}), "GRU": (torch.nn.GRUCell, {})}
CLIP = 0.05


def _hand_loop(cell, x, h0, c0, lengths, reverse, clip):
    """torch.nn cells; the state entering each live step goes through a hook clamping its grad."""
    T = x.shape[0]
    h, c, ys = h0, c0, [None] * T

    def clamped(s):
        s = s.clone()
        s.register_hook(lambda g: g.clamp(-clip, clip))
        return s

    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        live = torch.ones(x.shape[1], 1, dtype=torch.bool) if lengths is None \
            else (t < lengths).unsqueeze(1)
        if c is None:
            h_new, c_new = cell(x[t], clamped(h)), None
        else:
            h_new, c_new = cell(x[t], (clamped(h), clamped(c)))
            c = torch.where(live, c_new, c)
        ys[t] = torch.where(live, h_new, torch.zeros_like(h_new))
        h = torch.where(live, h_new, h)
    return torch.stack(ys), h, c


@pytest.mark.parametrize("mode", list(TORCH_MODES))
@pytest.mark.parametrize("lengths", [None, [6, 2, 4]], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_reference_clip_matches_hand_loop(mode, lengths, reverse):
    torch.manual_seed(0)
    cls, kw = CELL[mode]
    cell = cls(3, 4, dtype=torch.float64, **kw)
    with torch.no_grad():
        cell.weight_hh.mul_(6.0)  # a recurrence whose gradients grow, so the clamp bites
    T, B = 6, 3
    x = torch.randn(T, B, 3, dtype=torch.float64)
    h0 = torch.randn(B, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, 4, dtype=torch.float64, requires_grad=True) if mode == "LSTM" else None
    lens = None if lengths is None else torch.tensor(lengths)
    gen = torch.Generator().manual_seed(1)
    gy = torch.randn(T, B, 4, dtype=torch.float64, generator=gen)
    gh = torch.randn(B, 4, dtype=torch.float64, generator=gen)

    def grads(run):
        y, h, _ = run()
        loss = (y * gy).sum() + (h * gh).sum()
        leaves = [h0, cell.weight_hh] + ([c0] if c0 is not None else [])
        return torch.autograd.grad(loss, leaves)

    xw = torch.nn.functional.linear(x, cell.weight_ih, cell.bias_ih)
    ours = grads(lambda: recurrence_ref(mode, xw, cell.weight_hh, cell.bias_hh, h0, c0, lens,
                                        reverse, None, recurrent_grad_clip=CLIP))
    hand = grads(lambda: _hand_loop(cell, x, h0, c0, lens, reverse, CLIP))
    plain = grads(lambda: recurrence_ref(mode, xw, cell.weight_hh, cell.bias_hh, h0, c0, lens,
                                         reverse, None))
    for a, b in zip(hand, ours, strict=True):
        torch.testing.assert_close(b, a, **TOL[torch.float64])
    # the clamp did something (otherwise the test above proves nothing)
    assert any(not torch.allclose(a, b) for a, b in zip(plain, ours, strict=True))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_layer_clip_none_is_bit_identical(backend, kind):
    torch.manual_seed(0)
    a = getattr(fusedrnn, kind)(3, 5, 2, dtype=torch.float64, backend=backend)
    b = getattr(fusedrnn, kind)(3, 5, 2, dtype=torch.float64, backend=backend,
                                recurrent_grad_clip=None)
    b.load_state_dict(a.state_dict())
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    ga = torch.autograd.grad(a(x)[0].square().sum(), list(a.parameters()))
    gb = torch.autograd.grad(b(x)[0].square().sum(), list(b.parameters()))
    for u, v in zip(ga, gb, strict=True):
        assert torch.equal(u, v)


def test_layer_clip_bad_value():
    with pytest.raises(ValueError, match="recurrent_grad_clip must be None or a positive number"):
        fusedrnn.GRU(3, 4, recurrent_grad_clip=-1.0)


@pytest.mark.parametrize("mode", list(TORCH_MODES))
@pytest.mark.parametrize("lengths", [None, [5, 2, 4]], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_backend_clip_matches_reference(mode, lengths, reverse):
    """Every compiled backend that runs here (the Triton one in its interpreter) clamps like
    the reference."""
    names = [b for b in ("cpu", "triton") if b in fusedrnn.available_backends()]
    if not names:
        pytest.skip("no compiled backend runs on CPU tensors here")
    g = torch.Generator().manual_seed(3)
    G, T, B, H = GATES[mode], 5, 3, 4
    xw = torch.randn(T, B, G * H, generator=g)
    w_hh = torch.randn(G * H, H, generator=g) * 1.5
    b_hh = torch.randn(G * H, generator=g)
    h0 = torch.randn(B, H, generator=g)
    c0 = torch.randn(B, H, generator=g) if mode == "LSTM" else None
    lens = None if lengths is None else torch.tensor(lengths)
    gy, gh = torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g)
    leaves = [t for t in (xw, w_hh, b_hh, h0, c0) if t is not None]

    def grads(backend, dtype):
        ins = [t.to(dtype).requires_grad_() for t in leaves]
        xw_, w_, b_, h_ = ins[:4]
        c_ = ins[4] if c0 is not None else None
        y, h, _ = fusedrnn.recurrence(mode, xw_, w_, b_, h_, c_, lens, reverse, None,
                                      backend=backend, recurrent_grad_clip=CLIP)
        loss = (y * gy.to(dtype)).sum() + (h * gh.to(dtype)).sum()
        return torch.autograd.grad(loss, ins)

    want = grads("reference", torch.float64)
    for name in names:
        dtype = torch.float64 if name == "cpu" else torch.float32
        for a, b in zip(want, grads(name, dtype), strict=True):
            # gradients grow through this deliberately expanding recurrence: the absolute
            # tolerance is taken relative to each gradient's scale
            tol = dict(rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * max(1.0, a.abs().max()))
            torch.testing.assert_close(b, a.to(dtype), **tol, msg=lambda m: f"{name}: {m}")
