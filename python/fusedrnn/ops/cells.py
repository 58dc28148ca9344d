"""The equations of each cell, once, in PyTorch.

Each ``<mode>_step`` takes one step of the op contract (see ``reference.py``):

    xw_t  [B, G*H]   input projection of this step, ``b_ih`` included
    h     [B, H_out] previous hidden state (H_out = P with an LSTM projection, else H)
    c     [B, H]     previous cell state (LSTM only, else None)
    w_hh  [G*H, H_out], b_hh [G*H] or None, w_hr [P, H] or None (LSTM only)

and returns ``(h_new, c_new)`` (``c_new`` is None except for LSTM). Gate order is torch.nn's:
LSTM (i, f, g, o), GRU (r, z, n).

``CELLS`` is the one description of every cell that the Python side reads (the reference, the
backends' fakes and launchers, the Triton kernels' constants): its equations and its traits. The
shared loops test traits, never a cell's name. ``GATES``, ``STEPS`` and ``MODES`` are views of it.
The C++ twin of the traits is ``csrc/include/fusedrnn/cells.h`` (tests/test_cell_registry.py
checks that the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


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


@dataclass(frozen=True)
class Cell:
    """One cell: its equations and the traits the shared loops read instead of its name.

    Attributes:
        name: the op's ``mode`` (torch.nn's names for its cells).
        gates: G, the gate blocks of ``xw`` and ``w_hh`` ([T, B, G*H], [G*H, H_out]).
        step: the equations in PyTorch (the reference; see the module doc).
        has_cell_state: carries a cell state c besides h (c0, c_T, dc).
        recurrent_grad_differs: the gradient w.r.t. the recurrent pre-activation (W_hh h + b_hh)
            differs from the input-side one, so backward keeps it apart for dW_hh and dh_prev
            (GRU: n = tanh(x_n + r * hh_n)).
        direct_h_grad: h_new depends on h_prev directly, not only through W_hh (GRU's z * h_prev):
            backward reads h_prev and passes part of dh straight to dh_prev.
        saved: activations per unit its backward reads besides the states (cells.h num_saved).
        projection: accepts ``w_hr`` (torch.nn's proj_size).
    """

    name: str
    gates: int
    step: Callable
    has_cell_state: bool = False
    recurrent_grad_differs: bool = False
    direct_h_grad: bool = False
    saved: int = 0
    projection: bool = False


#: every cell, in the order of cells.h's ``enum class Cell`` (Triton's MODE is the index)
CELLS = {c.name: c for c in (
    Cell("RNN_TANH", 1, rnn_tanh_step),
    Cell("RNN_RELU", 1, rnn_relu_step),
    Cell("LSTM", 4, lstm_step, has_cell_state=True, saved=4, projection=True),
    Cell("GRU", 3, gru_step, recurrent_grad_differs=True, direct_h_grad=True, saved=4),
)}
#: views of CELLS by mode: G in the op contract, the step functions, the mode names
GATES = {name: c.gates for name, c in CELLS.items()}
STEPS = {name: c.step for name, c in CELLS.items()}
MODES = tuple(CELLS)
#: views of two traits, for the op surfaces' one-line tests
CELL_STATE = {name: c.has_cell_state for name, c in CELLS.items()}
SPLIT_REC = {name: c.recurrent_grad_differs for name, c in CELLS.items()}
#: Triton's constexpr MODE of each cell (ops/triton/cells.py branches on it)
MODE_ID = {name: i for i, name in enumerate(CELLS)}
