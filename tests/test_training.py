"""fusedrnn.training.TBPTT against full BPTT and against truncation done by hand on torch.nn."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn.training import TBPTT, detach_state, reset_state

TOL64 = dict(rtol=1e-10, atol=1e-12)  # float64 row of the tolerance table


class Net(nn.Module):
    """A recurrent layer plus a readout, with the (output, state) convention TBPTT expects."""

    def __init__(self, layer):
        super().__init__()
        self.rnn = layer
        self.head = nn.Linear(layer.hidden_size, 2, dtype=torch.float64)

    def forward(self, x, state=None):
        y, state = self.rnn(x, state)
        return self.head(y), state


def _mse(out, target):
    return (out - target).pow(2).mean()


def _data(T=12, B=3, I=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, B, I, generator=g, dtype=torch.float64),
            torch.randn(T, B, 2, generator=g, dtype=torch.float64))


def _twin(mode):
    """The same weights in a fusedrnn layer (under test) and a torch.nn layer (reference)."""
    torch.manual_seed(0)
    ours = Net(getattr(fusedrnn, mode)(4, 5, num_layers=2, dtype=torch.float64))
    ref = Net(getattr(nn, mode)(4, 5, num_layers=2, dtype=torch.float64))
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_chunk_equal_to_sequence_is_full_bptt(mode):
    ours, ref = _twin(mode)
    x, y = _data()
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    losses = TBPTT(ours, _mse, opt, chunk_len=x.size(0)).train(x, y)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    loss = _mse(ref(x)[0], y)
    loss.backward()
    ref_opt.step()
    assert len(losses) == 1 and losses[0] == pytest.approx(loss.item(), rel=1e-10)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, **TOL64, msg=name)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("chunk", [1, 5, 12])
def test_truncated_gradients_match_hand_truncation(mode, chunk):
    """optimizer=None leaves the summed chunk gradients in .grad; the reference runs torch.nn
    once to get the states at the chunk starts, then backpropagates each chunk from its
    detached start state."""
    ours, ref = _twin(mode)
    x, y = _data(T=12)
    TBPTT(ours, _mse, None, chunk_len=chunk).train(x, y)
    state = None
    for a in range(0, x.size(0), chunk):
        state = detach_state(state)
        out, state = ref(x[a:a + chunk], state)
        _mse(out, y[a:a + chunk]).backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL64, msg=name)


def test_state_is_carried_and_detached_between_chunks():
    ours, ref = _twin("LSTM")
    x, y = _data(T=12)
    tb = TBPTT(ours, _mse, None, chunk_len=4)
    # carried: evaluating chunk by chunk equals one full forward pass
    full = torch.stack([_mse(ref(x)[0][a:a + 4], y[a:a + 4]) for a in range(0, 12, 4)]).mean()
    assert tb.evaluate(x, y) == pytest.approx(full.item(), rel=1e-10)
    # detached: the input of an earlier chunk gets no gradient from a later chunk's loss
    tb.reset()
    xg = x.clone().requires_grad_(True)
    out1 = tb.forward_chunk(xg[:4])
    tb.state = detach_state(tb.state)
    out2 = tb.forward_chunk(xg[4:8])
    (g,) = torch.autograd.grad(out2.sum(), [xg])
    assert torch.all(g[:4] == 0) and torch.any(g[4:8] != 0)
    assert out1.shape == (4, 3, 2)
    assert all(not s.requires_grad for s in detach_state(tb.state))


def test_resets_start_sequences_afresh_mid_chunk():
    """A stream whose sequence restarts at step 5 behaves like that sequence run on its own."""
    ours, _ = _twin("GRU")
    x, y = _data(T=12)
    resets = torch.zeros(12, 3, dtype=torch.bool)
    resets[5, 1] = True
    tb = TBPTT(ours, _mse, None, chunk_len=8)
    xg = x.clone().requires_grad_(True)
    tb.state = None
    out = tb.forward_chunk(xg[:8], resets[:8])
    alone, _ = ours(x[5:8, 1:2])
    torch.testing.assert_close(out[5:8, 1:2], alone, **TOL64)
    # streams without a reset are not disturbed by another stream's reset
    straight, _ = ours(x[:8])
    torch.testing.assert_close(out[:, [0, 2]], straight[:, [0, 2]], **TOL64)
    # and no gradient crosses the reset
    (g,) = torch.autograd.grad(out[5:, 1].sum(), [xg])
    assert torch.all(g[:5, 1] == 0) and torch.any(g[5:8, 1] != 0)
    losses = TBPTT(ours, _mse, torch.optim.SGD(ours.parameters(), lr=0.01), chunk_len=5) \
        .train(x, y, resets)
    assert len(losses) == 3


def test_reset_state_helpers():
    h = torch.ones(2, 3, 4)
    c = torch.full((2, 3, 4), 2.0)
    mask = torch.tensor([False, True, False])
    h2, c2 = reset_state((h, c), mask)
    assert torch.all(h2[:, 1] == 0) and torch.all(h2[:, [0, 2]] == 1)
    assert torch.all(c2[:, 1] == 0) and torch.all(c2[:, [0, 2]] == 2)
    assert reset_state(None, mask) is None and detach_state(None) is None
    with pytest.raises(ValueError, match="chunk_len"):
        TBPTT(nn.GRU(2, 2), _mse, None, chunk_len=0)
    tb = TBPTT(nn.GRU(2, 2), _mse, None, chunk_len=2)
    with pytest.raises(ValueError, match="resets"):
        tb.forward_chunk(torch.zeros(3, 1, 2), torch.zeros(2, 1, dtype=torch.bool))
    copy.deepcopy(tb)
