"""The layers' dropout regularisers that act on whole sequences: DropConnect on the recurrent
weights (``weight_drop``, AWD-LSTM's WeightDrop) and locked (variational) dropout between layers
(``dropout_mode="locked"``, Gal & Ghahramani 2016; AWD-LSTM's LockedDropout).

Both are plain PyTorch on tensors the backends already take, so they work with every backend,
with autograd and under ``torch.compile``; when off they add nothing to the call.

How the masks are drawn (documented so a test or a user can draw the same ones by hand):

* ``weight_drop = p``: for each layer, direction 0 then 1, just before that layer's recurrence
  (after the call's zoneout masks, ``zoneout_mask``, when zoneout is on),
  ``mask = torch.empty_like(w_hh).bernoulli_(1 - p)`` on the weight ``weight_hh_l{k}[_reverse]``
  (as read at call time, cast to the dtype the layer computes in), and the backend gets
  ``w_hh * mask / (1 - p)``: a new tensor, so the gradient reaches the raw parameter through the
  product and the parameter itself is never patched.
* ``dropout_mode="locked"``: after every layer but the last, on its time-major output
  ``y [T, B, F]``, ``mask = y.new_empty((1, B, F)).bernoulli_(1 - p)`` and ``y * mask / (1 - p)``:
  one mask per sequence (row) and layer, the same at every step.
"""

from __future__ import annotations

from torch import Tensor

DROPOUT_MODES = ("standard", "locked")


def check_weight_drop(p) -> float:
    """``weight_drop`` as a float in [0, 1), or ValueError naming it."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(
            f"weight_drop must be a float in [0, 1) (the probability of dropping each recurrent "
            f"weight; 0 = off), got {p!r}"
        )
    return float(p)


def check_dropout_mode(mode) -> str:
    """``dropout_mode`` as one of DROPOUT_MODES, or ValueError naming it."""
    if mode not in DROPOUT_MODES:
        raise ValueError(
            f"dropout_mode must be 'standard' (torch.nn's per-element dropout between layers) or "
            f"'locked' (one mask per sequence and layer, shared across steps), got {mode!r}"
        )
    return mode


def drop_weight(w: Tensor, p: float, training: bool) -> Tensor:
    """DropConnect: ``w * Bernoulli(1 - p) / (1 - p)`` in training, ``w`` itself otherwise."""
    if not training or p == 0:
        return w
    return w * w.new_empty(w.shape).bernoulli_(1 - p).div_(1 - p)


def locked_dropout(y: Tensor, p: float) -> Tensor:
    """``y [T, B, F]`` times one ``[1, B, F]`` mask, scaled by ``1 / (1 - p)`` (p < 1); p = 1
    zeroes everything, as torch.nn's dropout does."""
    if p == 1:
        return y * 0
    return y * y.new_empty((1, y.shape[1], y.shape[2])).bernoulli_(1 - p).div_(1 - p)


def check_reset(reset, want: tuple, form: str, device) -> Tensor:
    """A ``reset`` argument (RNN/LSTM/GRU and MinGRU/MinLSTM ``forward(..., reset=)``) as a
    bool tensor of shape ``want`` (described by ``form`` in the error) on ``device``."""
    if not isinstance(reset, Tensor):
        raise TypeError(f"reset must be a tensor (bool or 0/1 float), got {type(reset).__name__}")
    if reset.is_complex():
        raise ValueError(f"reset must be a bool, integer or floating 0/1 tensor, got {reset.dtype}")
    if tuple(reset.shape) != want:
        raise ValueError(f"reset must have shape {form} = {want} to match the input, got "
                         f"{tuple(reset.shape)}")
    return reset.to(device) != 0
