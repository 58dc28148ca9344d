"""The equations of each cell, once, in PyTorch.

Each ``<mode>_step`` takes one step of the op contract (see ``reference.py``):

    xw_t  [B, G*H]   input projection of this step, ``b_ih`` included
    h     [B, H_out] previous hidden state (H_out = P with an LSTM projection, else H)
    c     [B, H]     previous cell state (LSTM only, else None)
    w_hh  [G*H, H_out], b_hh [G*H] or None, w_hr [P, H] or None (LSTM only)

and returns ``(h_new, c_new)`` (``c_new`` is None except for LSTM). Gate order is torch.nn's:
LSTM (i, f, g, o), GRU (r, z, n).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: number of gate blocks per cell type, G in the op contract
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
MODES = tuple(GATES)


def _recurrent(h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    return F.linear(h, w_hh, b_hh)  # [B, G*H]


def rnn_tanh_step(xw_t, h, c, w_hh, b_hh, w_hr=None):
    return torch.tanh(xw_t + _recurrent(h, w_hh, b_hh)), None


def rnn_relu_step(xw_t, h, c, w_hh, b_hh, w_hr=None):
    return torch.relu(xw_t + _recurrent(h, w_hh, b_hh)), None


def lstm_step(xw_t, h, c, w_hh, b_hh, w_hr=None):
    i, f, g, o = (xw_t + _recurrent(h, w_hh, b_hh)).chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    if w_hr is not None:
        h_new = F.linear(h_new, w_hr)  # [B, P]
    return h_new, c_new


def gru_step(xw_t, h, c, w_hh, b_hh, w_hr=None):
    xr, xz, xn = xw_t.chunk(3, dim=1)
    # b_hn stays inside the reset gate's product, which is why b_hh is not folded into xw
    hr, hz, hn = _recurrent(h, w_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h, None


STEPS = {
    "RNN_TANH": rnn_tanh_step,
    "RNN_RELU": rnn_relu_step,
    "LSTM": lstm_step,
    "GRU": gru_step,
}
