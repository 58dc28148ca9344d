"""fusedrnn.diagnostics.gradient_flow against analytic answers and an independent cell loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn.diagnostics import fit_decay_rate, gradient_flow, plot_gradient_flows

TOL64 = dict(rtol=1e-10, atol=0.0)  # float64 row of the tolerance table, relative


def _perm(n: int, seed: int) -> torch.Tensor:
    """A permutation matrix: orthogonal and non-negative, so a scaled one keeps states positive."""
    g = torch.Generator().manual_seed(seed)
    return torch.eye(n, dtype=torch.float64)[torch.randperm(n, generator=g)]


def _linear_relu_rnn(factory, H: int, s: float, num_layers: int = 1):
    """RNN(relu) with W_hh = s * P, W_ih a permutation, positive biases. With positive inputs
    every pre-activation is positive, relu is the identity and the layer is linear:
    h_t = P_ih x_t + b + s P h_{t-1}, so ∂L/∂h_t = (s Pᵀ)^(k-t) ∂L/∂h_k exactly."""
    rnn = factory(H, H, nonlinearity="relu", num_layers=num_layers, dtype=torch.float64)
    with torch.no_grad():
        for layer in range(num_layers):
            getattr(rnn, f"weight_ih_l{layer}").copy_(_perm(H, 10 + layer))
            getattr(rnn, f"weight_hh_l{layer}").copy_(s * _perm(H, 20 + layer))
            getattr(rnn, f"bias_ih_l{layer}").fill_(0.1)
            getattr(rnn, f"bias_hh_l{layer}").fill_(0.05)
    return rnn


FACTORIES = {
    "fusedrnn-auto": lambda *a, **k: fusedrnn.RNN(*a, **k),
    "fusedrnn-reference": lambda *a, **k: fusedrnn.RNN(*a, backend="reference", **k),
    "torch.nn": nn.RNN,
}


@pytest.mark.parametrize("impl", list(FACTORIES))
@pytest.mark.parametrize("s", [0.5, 0.9, 1.2])
def test_linear_rnn_norms_decay_by_spectral_norm(impl, s):
    T, B, H = 13, 3, 6
    rnn = _linear_relu_rnn(FACTORIES[impl], H, s)
    x = torch.rand(T, B, H, dtype=torch.float64) + 0.1
    u = torch.rand(H, dtype=torch.float64) + 0.5
    flow = gradient_flow(rnn, x, loss_fn=lambda y, t: (y * u).sum())
    # the permutations preserve norms: ‖∂L/∂h_t‖ = s^(T-1-t) ‖u‖ per sequence, and
    # ∂L/∂x_t = P_ihᵀ ∂L/∂h_t has the same norm
    expect = torch.tensor([s ** (T - 1 - t) for t in range(T)], dtype=torch.float64) * u.norm()
    torch.testing.assert_close(flow.h_grad_norm, expect, **TOL64)
    torch.testing.assert_close(flow.x_grad_norm, expect, **TOL64)
    assert flow.h_decay_rate == pytest.approx(s, rel=1e-10)
    assert flow.x_decay_rate == pytest.approx(s, rel=1e-10)
    torch.testing.assert_close(flow.h_step_ratio, torch.full((T - 1,), s, dtype=torch.float64),
                               **TOL64)
    assert flow.c_grad_norm is None


@pytest.mark.parametrize("impl", ["fusedrnn-auto", "torch.nn"])
def test_two_layers_measure_the_top_layer_and_several_loss_steps(impl):
    """Top layer of a 2-layer stack, loss at steps 4 and T-1 with u = 1 (a fixed point of every
    permutation): ∂L/∂h_t = Σ_{k in steps, k >= t} s^(k-t) · 1."""
    T, B, H, s = 11, 2, 5, 0.8
    rnn = _linear_relu_rnn(FACTORIES[impl], H, s, num_layers=2)
    x = torch.rand(T, B, H, dtype=torch.float64) + 0.1
    flow = gradient_flow(rnn, x, loss_steps=[4, -1], loss_fn=lambda y, t: y.sum())
    expect = torch.tensor([sum(s ** (k - t) for k in (4, T - 1) if k >= t) for t in range(T)],
                          dtype=torch.float64) * math.sqrt(H)
    torch.testing.assert_close(flow.h_grad_norm, expect, **TOL64)
    assert flow.loss_steps == [4, T - 1]


def _cell_loop_norms(cell, x, loss_fn):
    """Independent reference: torch.nn's cell in a hand-written loop, retain_grad on states.

    An LSTM's c_t is measured as it is passed on to step t+1 (what BPTT carries between steps,
    not counting its path into the same step's h_t), so the loop hands on a copy of it."""
    T, B, _ = x.shape
    h = torch.zeros(B, cell.hidden_size, dtype=x.dtype)
    c = torch.zeros_like(h) if isinstance(cell, nn.LSTMCell) else None
    hs, cs = [], []
    for t in range(T):
        if c is None:
            h = cell(x[t], h)
        else:
            h, c = cell(x[t], (h, c))
            c = c * 1.0  # the copy passed on: its grad is the carried part only
            c.retain_grad()
            cs.append(c)
        h.retain_grad()
        hs.append(h)
    loss_fn(h, T - 1).backward()

    def norm(g):  # None: the last c_t is passed nowhere, so it gets no gradient
        return torch.zeros((), dtype=x.dtype) if g is None else g.norm(dim=1).mean()

    return (torch.stack([norm(v.grad) for v in hs]),
            torch.stack([norm(v.grad) for v in cs]) if cs else None)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tbi", "bti"])
def test_gated_cells_match_a_torch_cell_loop(mode, batch_first):
    torch.manual_seed(0)
    T, B, I, H = 9, 4, 3, 7
    layer = getattr(fusedrnn, mode)(I, H, batch_first=batch_first, dtype=torch.float64)
    cell = getattr(nn, mode + "Cell")(I, H, dtype=torch.float64)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(layer, name + "_l0"))
    w = torch.randn(H, dtype=torch.float64)
    loss_fn = lambda y, t: torch.tanh(y @ w).pow(2).sum()  # noqa: E731
    x = torch.randn(T, B, I, dtype=torch.float64)
    flow = gradient_flow(layer, x.transpose(0, 1) if batch_first else x, loss_fn=loss_fn)
    h_ref, c_ref = _cell_loop_norms(cell, x, loss_fn)
    torch.testing.assert_close(flow.h_grad_norm, h_ref, **TOL64)
    if mode == "LSTM":
        torch.testing.assert_close(flow.c_grad_norm, c_ref, **TOL64)
    assert flow.x_grad_norm.shape == (T,)


def test_x_grads_match_autograd_on_torch_layer():
    torch.manual_seed(1)
    T, B, I, H = 8, 3, 4, 5
    gru = nn.GRU(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    y, _ = gru(x)
    y[2].sum().backward()
    ref = x.grad.norm(dim=2).mean(dim=1)
    flow = gradient_flow(gru, x.detach(), loss_steps=2)
    torch.testing.assert_close(flow.x_grad_norm, ref, **TOL64)
    # nothing after the loss step can influence it
    assert torch.all(flow.h_grad_norm[3:] == 0) and torch.all(flow.x_grad_norm[3:] == 0)


def test_bidirectional_has_no_state_curve_and_errors_are_clear():
    gru = fusedrnn.GRU(3, 4, bidirectional=True)
    flow = gradient_flow(gru, torch.randn(6, 2, 3))
    assert flow.h_grad_norm is None and flow.x_grad_norm.shape == (6,)
    with pytest.raises(ValueError, match="3-D"):
        gradient_flow(gru, torch.randn(6, 3))
    with pytest.raises(ValueError, match="out of range"):
        gradient_flow(gru, torch.randn(6, 2, 3), loss_steps=6)


def test_fit_decay_rate():
    norms = 3.0 * 0.7 ** torch.arange(9, -1, -1, dtype=torch.float64)
    assert fit_decay_rate(norms, 9) == pytest.approx(0.7, rel=1e-12)
    assert math.isnan(fit_decay_rate(torch.zeros(5), 4))


def test_plot_writes_png(tmp_path):
    rnn = fusedrnn.LSTM(2, 4)
    flows = [gradient_flow(rnn, torch.randn(5, 2, 2), label="lstm")]
    flows[0].plot(tmp_path / "one.png", title="t")
    plot_gradient_flows(flows, tmp_path / "many.png")
    for name in ("one.png", "many.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not hasattr(fusedrnn, "MinGRU"), reason="fusedrnn.MinGRU not in this tree")
@pytest.mark.parametrize("beta", [-1.0, 0.5, 3.0])
def test_min_gru_decays_by_its_constant_forget_weight(beta):
    """MinGRU is h_t = sigmoid(-u_t) h_{t-1} + ..., u_t from x_t alone. With zero input weights
    and every input bias at beta, u_t = beta at every step, so ∂L/∂h_t = sigmoid(-beta)^(T-1-t) u
    for L = u·h_T."""
    T, B, H = 10, 2, 5
    layer = fusedrnn.MinGRU(3, H, dtype=torch.float64)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.fill_(0.0 if name.startswith("weight") else beta)
    u = torch.rand(H, dtype=torch.float64) + 0.5
    flow = gradient_flow(layer, torch.randn(T, B, 3, dtype=torch.float64),
                         loss_fn=lambda y, t: (y * u).sum())
    a = 1.0 / (1.0 + math.exp(beta))
    expect = torch.tensor([a ** (T - 1 - t) for t in range(T)], dtype=torch.float64) * u.norm()
    torch.testing.assert_close(flow.h_grad_norm, expect, **TOL64)
    assert flow.h_decay_rate == pytest.approx(a, rel=1e-10)
