"""The equations of each cell, once, in PyTorch.

Each ``<mode>_step`` takes one step of the op contract (see ``reference.py``):

    xw_t  [B, G*H]   input projection of this step, ``b_ih`` included
    h     [B, H_out] previous hidden state (H_out = P with an LSTM projection, else H)
    c     [B, H]     previous cell state (LSTM only, else None)
    w_hh  [G*H, H_out], b_hh [G*H] or None, w_hr [P, H] or None (LSTM only)

and returns ``(h_new, c_new)`` (``c_new`` is None except for LSTM). Gate order is torch.nn's:
LSTM (i, f, g, o), GRU (r, z, n).

The LayerNorm cells (Ba et al. 2016 as Haste implements them) take their extra per-layer
parameters as ``cell_params`` (their meaning per mode: ``CELL_PARAMS``). Their recurrent
pre-activation is ``LN(h W_hh^T) * ln_hh_weight + b_hh`` (LN over the whole G*H row, biased
variance, eps ``LN_EPS``, no LN bias); the input side ``LN(x W_ih^T) * ln_ih_weight + b_ih`` is
the caller's ``xw``. LN_LSTM also normalises its cell state before the output nonlinearity:
``h = sigmoid(o) * tanh(LN(c) * ln_c_weight + ln_c_bias)`` (the state c itself stays raw).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: number of gate blocks per cell type, G in the op contract
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3, "LN_LSTM": 4, "LN_GRU": 3}
MODES = tuple(GATES)
#: torch.nn's cells: the modes every backend runs (the LayerNorm cells need ``cell_params``)
TORCH_MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
#: whether the cell carries a cell state c besides h
CELL_STATE = {"RNN_TANH": False, "RNN_RELU": False, "LSTM": True, "GRU": False,
              "LN_LSTM": True, "LN_GRU": False}
#: the op's ``cell_params`` per mode: (name, size in units of H), in this order
CELL_PARAMS = {
    "RNN_TANH": (), "RNN_RELU": (), "LSTM": (), "GRU": (),
    "LN_LSTM": (("ln_hh_weight", 4), ("ln_c_weight", 1), ("ln_c_bias", 1)),
    "LN_GRU": (("ln_hh_weight", 3),),
}
#: the epsilon of every layer normalisation of the LayerNorm cells
LN_EPS = 1e-5


def _recurrent(h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    return F.linear(h, w_hh, b_hh)  # [B, G*H]


def layer_norm(v: Tensor, weight: Tensor | None, bias: Tensor | None = None) -> Tensor:
    """LN over the last dimension (biased variance, eps LN_EPS), then * weight (+ bias)."""
    return F.layer_norm(v, v.shape[-1:], weight, bias, eps=LN_EPS)


def _ln_recurrent(h, w_hh, b_hh, ln_hh_weight):
    hh = layer_norm(F.linear(h, w_hh), ln_hh_weight)  # [B, G*H]
    return hh if b_hh is None else hh + b_hh


def rnn_tanh_step(xw_t, h, c, w_hh, b_hh, w_hr=None):
    return torch.tanh(xw_t + _recurrent(h, w_hh, b_hh)), None


def rnn_relu_step(xw_t, h, c, w_hh, b_hh, w_hr=None):
    return torch.relu(xw_t + _recurrent(h, w_hh, b_hh)), None


def _lstm(gates, c, out=lambda c: c):
    """The LSTM body on the summed pre-activations; ``out`` maps c_new before the tanh."""
    i, f, g, o = gates.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(out(c_new)), c_new


def lstm_step(xw_t, h, c, w_hh, b_hh, w_hr=None):
    h_new, c_new = _lstm(xw_t + _recurrent(h, w_hh, b_hh), c)
    if w_hr is not None:
        h_new = F.linear(h_new, w_hr)  # [B, P]
    return h_new, c_new


def _gru(xw_t, hh, h):
    """The GRU body: xw_t and the recurrent pre-activation hh (b_hh included), [B, 3H] each."""
    xr, xz, xn = xw_t.chunk(3, dim=1)
    hr, hz, hn = hh.chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h, None


def gru_step(xw_t, h, c, w_hh, b_hh, w_hr=None):
    # b_hn stays inside the reset gate's product, which is why b_hh is not folded into xw
    return _gru(xw_t, _recurrent(h, w_hh, b_hh), h)


def ln_lstm_step(xw_t, h, c, w_hh, b_hh, w_hr=None, cell_params=()):
    ln_hh_weight, ln_c_weight, ln_c_bias = cell_params
    gates = xw_t + _ln_recurrent(h, w_hh, b_hh, ln_hh_weight)
    return _lstm(gates, c, lambda c_new: layer_norm(c_new, ln_c_weight, ln_c_bias))


def ln_gru_step(xw_t, h, c, w_hh, b_hh, w_hr=None, cell_params=()):
    (ln_hh_weight,) = cell_params
    return _gru(xw_t, _ln_recurrent(h, w_hh, b_hh, ln_hh_weight), h)


STEPS = {
    "RNN_TANH": rnn_tanh_step,
    "RNN_RELU": rnn_relu_step,
    "LSTM": lstm_step,
    "GRU": gru_step,
    "LN_LSTM": ln_lstm_step,
    "LN_GRU": ln_gru_step,
}
