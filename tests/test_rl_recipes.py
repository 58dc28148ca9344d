"""docs/rl.md's recipes: one ``reset=`` call in place of CleanRL's ``get_states`` loop
(ppo_atari_lstm.py) and of SB3-contrib RecurrentPPO's ``_process_sequence``. Each is checked
against that library's own per-step loop, written here as the library writes it, on torch.nn
layers, in float64: outputs, final state and every gradient (input, initial state, parameters).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fusedrnn

T64 = dict(rtol=1e-9, atol=1e-11)
# "auto" is what a user gets (the fused CPU kernel, or a visible fallback to the reference)
BACKENDS = ["reference", "auto"]
pytestmark = pytest.mark.filterwarnings("ignore:fusedrnn.*falling back:UserWarning")


# -- CleanRL, ppo_atari_lstm.py: Agent.get_states ------------------------------------------------

def cleanrl_get_states(lstm: nn.LSTM, hidden, lstm_state, done):
    """CleanRL's loop, verbatim but for the CNN in front (``hidden`` is its output)."""
    batch_size = lstm_state[0].shape[1]
    hidden = hidden.reshape((-1, batch_size, lstm.input_size))
    done = done.reshape((-1, batch_size))
    new_hidden = []
    for h, d in zip(hidden, done):
        h, lstm_state = lstm(
            h.unsqueeze(0),
            (
                (1.0 - d).view(1, -1, 1) * lstm_state[0],
                (1.0 - d).view(1, -1, 1) * lstm_state[1],
            ),
        )
        new_hidden += [h]
    new_hidden = torch.flatten(torch.cat(new_hidden), 0, 1)
    return new_hidden, lstm_state


def fused_get_states(lstm: fusedrnn.LSTM, hidden, lstm_state, done):
    """docs/rl.md's replacement: the loop becomes one call."""
    batch_size = lstm_state[0].shape[1]
    hidden = hidden.reshape((-1, batch_size, lstm.input_size))
    done = done.reshape((-1, batch_size))
    new_hidden, lstm_state = lstm(hidden, lstm_state, reset=done)
    return torch.flatten(new_hidden, 0, 1), lstm_state


# -- SB3-contrib, sb3_contrib/common/recurrent/policies.py: _process_sequence -----------------

def sb3_process_sequence(features, lstm_states, episode_starts, lstm):
    """RecurrentActorCriticPolicy._process_sequence as SB3-contrib writes it (fast path when no
    episode starts inside the sequence, else one call per step), for nn.LSTM and nn.GRU/RNN."""
    is_lstm = isinstance(lstm, nn.LSTM)
    n_seq = lstm_states[0].shape[1] if is_lstm else lstm_states.shape[1]
    features_sequence = features.reshape((n_seq, -1, lstm.input_size)).swapaxes(0, 1)
    episode_starts = episode_starts.reshape((n_seq, -1)).swapaxes(0, 1)
    if torch.all(episode_starts == 0.0):
        lstm_output, lstm_states = lstm(features_sequence, lstm_states)
        lstm_output = torch.flatten(lstm_output.transpose(0, 1), start_dim=0, end_dim=1)
        return lstm_output, lstm_states
    lstm_output = []
    for features, episode_start in zip(features_sequence, episode_starts, strict=True):
        if is_lstm:
            hidden, lstm_states = lstm(
                features.unsqueeze(dim=0),
                (
                    (1.0 - episode_start).view(1, n_seq, 1) * lstm_states[0],
                    (1.0 - episode_start).view(1, n_seq, 1) * lstm_states[1],
                ),
            )
        else:
            hidden, lstm_states = lstm(
                features.unsqueeze(dim=0), (1.0 - episode_start).view(1, n_seq, 1) * lstm_states
            )
        lstm_output += [hidden]
    lstm_output = torch.flatten(torch.cat(lstm_output).transpose(0, 1), start_dim=0, end_dim=1)
    return lstm_output, lstm_states


def fused_process_sequence(features, lstm_states, episode_starts, lstm):
    """docs/rl.md's replacement: no fast path, no loop."""
    is_lstm = isinstance(lstm, nn.LSTM)
    n_seq = lstm_states[0].shape[1] if is_lstm else lstm_states.shape[1]
    features_sequence = features.reshape((n_seq, -1, lstm.input_size)).swapaxes(0, 1)
    episode_starts = episode_starts.reshape((n_seq, -1)).swapaxes(0, 1)
    lstm_output, lstm_states = lstm(features_sequence, lstm_states, reset=episode_starts)
    lstm_output = torch.flatten(lstm_output.transpose(0, 1), start_dim=0, end_dim=1)
    return lstm_output, lstm_states


# -- the comparison ----------------------------------------------------------------------------

def _dones(case, T, B, gen):
    d = torch.zeros(T, B, dtype=torch.float64)
    if case == "random":
        d = (torch.rand(T, B, generator=gen) < 0.25).double()
    elif case == "step0":
        d[0] = 1.0
    elif case == "all_rows_same_step":
        d[T // 2] = 1.0
    return d


def _run(lib_fn, layer, x, state, done, order):
    """lib_fn's outputs, final state, and the gradients of a random-weighted loss w.r.t. the
    input, the initial state and every parameter."""
    layer.zero_grad()
    x = x.clone().requires_grad_()
    st = tuple(s.clone().requires_grad_() for s in state)
    out, new = lib_fn(layer, x, st if len(st) == 2 else st[0], done) if order == "cleanrl" \
        else lib_fn(x, st if len(st) == 2 else st[0], done, layer)
    new = new if isinstance(new, tuple) else (new,)
    gen = torch.Generator().manual_seed(99)
    loss = sum((t * torch.randn(t.shape, dtype=t.dtype, generator=gen)).sum() for t in (out, *new))
    loss.backward()
    return [out, *new, x.grad, *(s.grad for s in st)] + [p.grad for p in layer.parameters()]


def _twin(cls_nn, cls_fused, backend, I, H, layers):
    torch.manual_seed(0)
    ref = cls_nn(I, H, num_layers=layers, dtype=torch.float64)
    ours = cls_fused(I, H, num_layers=layers, dtype=torch.float64, backend=backend)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _assert_all_close(got, want):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a is not None and b is not None, f"tensor {i}: missing gradient"
        torch.testing.assert_close(a, b, **T64, msg=lambda m: f"tensor {i}: {m}")


CASES = ["random", "step0", "all_rows_same_step", "none"]


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_cleanrl_get_states(backend, case, layers):
    T, B, I, H = 6, 4, 5, 3  # num_steps x num_envs rollout, flattened as CleanRL stores it
    ref, ours = _twin(nn.LSTM, fusedrnn.LSTM, backend, I, H, layers)
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(T * B, I, dtype=torch.float64, generator=gen)
    state = tuple(torch.randn(layers, B, H, dtype=torch.float64, generator=gen) for _ in range(2))
    done = _dones(case, T, B, gen).reshape(-1)
    want = _run(cleanrl_get_states, ref, hidden, state, done, "cleanrl")
    got = _run(fused_get_states, ours, hidden, state, done, "cleanrl")
    _assert_all_close(got, want)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sb3_process_sequence(backend, case, kind):
    n_seq, T, F, H = 3, 5, 4, 3  # SB3 stores the minibatch sequence-major: [n_seq * T, F]
    cls = {"lstm": (nn.LSTM, fusedrnn.LSTM), "gru": (nn.GRU, fusedrnn.GRU),
           "rnn": (nn.RNN, fusedrnn.RNN)}[kind]
    ref, ours = _twin(*cls, backend, F, H, 1)
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(n_seq * T, F, dtype=torch.float64, generator=gen)
    n_state = 2 if kind == "lstm" else 1
    state = tuple(torch.randn(1, n_seq, H, dtype=torch.float64, generator=gen)
                  for _ in range(n_state))
    starts = _dones(case, T, n_seq, gen).t().reshape(-1)  # sequence-major, as SB3's buffer
    want = _run(sb3_process_sequence, ref, features, state, starts, "sb3")
    got = _run(fused_process_sequence, ours, features, state, starts, "sb3")
    _assert_all_close(got, want)
