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

The LayerNorm cells (Ba et al. 2016 as Haste implements them) take their extra per-layer
parameters as the op's ``cell_params`` (their names and sizes: ``Cell.cell_params``). Their
recurrent pre-activation is ``LN(h W_hh^T) * ln_hh_weight + b_hh`` (LN over the whole G*H row,
biased variance, eps ``LN_EPS``, no LN bias); the input side ``LN(x W_ih^T) * ln_ih_weight +
b_ih`` is the caller's ``xw``. LN_LSTM also normalises its cell state before the output
nonlinearity: ``h = sigmoid(o) * tanh(LN(c) * ln_c_weight + ln_c_bias)`` (the state c itself
stays raw).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

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
        cell_params: the op's extra per-layer parameters, in order: (name, size in units of H)
            (cells.h num_cell_params / cell_param_units). A backend runs such a cell only when
            its ``recurrence`` takes the keyword ``cell_params``.
        layer: the drop-in layer that runs the cell, for messages (default: its name).
        norm_recurrent: the row of ``W_hh h`` (all G*H values) is layer-normalised and scaled by
            ``cell_params[0]`` before ``b_hh`` is added (cells.h ``norm_recurrent``).
        norm_state: the new cell state's row (H values) is layer-normalised, scaled and shifted
            by ``cell_params[1:3]`` before the output nonlinearity (cells.h ``norm_state``).
            Either trait makes the cell's step need whole batch rows in one place.
    """

    name: str
    gates: int
    step: Callable
    has_cell_state: bool = False
    recurrent_grad_differs: bool = False
    direct_h_grad: bool = False
    saved: int = 0
    projection: bool = False
    cell_params: tuple[tuple[str, int], ...] = ()
    layer: str = ""
    norm_recurrent: bool = False
    norm_state: bool = False

    @property
    def row_wise(self) -> bool:
        """Whether a step reduces over a whole batch row (every unit): the LayerNorm cells."""
        return self.norm_recurrent or self.norm_state

    @property
    def title(self) -> str:
        """How messages name the cell: its layer and mode, e.g. "LayerNormLSTM (LN_LSTM)"."""
        return f"{self.layer} ({self.name})" if self.layer else self.name


#: every cell, in the order of cells.h's ``enum class Cell`` (Triton's MODE is the index)
CELLS = {c.name: c for c in (
    Cell("RNN_TANH", 1, rnn_tanh_step),
    Cell("RNN_RELU", 1, rnn_relu_step),
    Cell("LSTM", 4, lstm_step, has_cell_state=True, saved=4, projection=True),
    Cell("GRU", 3, gru_step, recurrent_grad_differs=True, direct_h_grad=True, saved=4),
    Cell("LN_LSTM", 4, ln_lstm_step, has_cell_state=True, saved=5, layer="LayerNormLSTM",
         cell_params=(("ln_hh_weight", 4), ("ln_c_weight", 1), ("ln_c_bias", 1)),
         norm_recurrent=True, norm_state=True),
    Cell("LN_GRU", 3, ln_gru_step, recurrent_grad_differs=True, direct_h_grad=True, saved=4,
         layer="LayerNormGRU", cell_params=(("ln_hh_weight", 3),), norm_recurrent=True),
)}
#: views of CELLS by mode: G in the op contract, the step functions, the mode names
GATES = {name: c.gates for name, c in CELLS.items()}
STEPS = {name: c.step for name, c in CELLS.items()}
MODES = tuple(CELLS)
#: torch.nn's cells, which every backend runs (the others need ``cell_params``)
TORCH_MODES = tuple(name for name, c in CELLS.items() if not c.cell_params)
#: views of two traits, for the op surfaces' one-line tests
CELL_STATE = {name: c.has_cell_state for name, c in CELLS.items()}
SPLIT_REC = {name: c.recurrent_grad_differs for name, c in CELLS.items()}
#: Triton's constexpr MODE of each cell (ops/triton/cells.py branches on it)
MODE_ID = {name: i for i, name in enumerate(CELLS)}
