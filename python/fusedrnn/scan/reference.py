"""The reference backend of the scan: a plain PyTorch time loop.

Every fast scan backend (``cpu``, ``triton``) is checked against these two functions; they in turn
are checked against a literal ``h = a * h + b`` loop in float64 by tests/test_scan.py. Autograd
comes from PyTorch.

Layout (everywhere in ``fusedrnn.scan``): batch first, ``[B, T, D]`` with the channels ``D``
innermost. Arithmetic runs in float32 for float32/bfloat16/float16 inputs (float64 stays float64)
and results are cast back to the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.reference import compute_dtype  # the dtype the scan accumulates in


def check_scan_args(a: Tensor, b: Tensor, h0: Tensor | None, names=("a", "b", "h0")) -> None:
    """Validate the arguments of a scan; every backend calls this first.

    Raises ValueError naming the argument, what was expected and what was given.
    """
    na, nb, nh = names
    for name, t in ((na, a), (nb, b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor [B, T, D], got {type(t).__name__}")
    if a.dim() != 3:
        raise ValueError(f"{na} must be 3-D [B, T, D] (batch first), got shape {tuple(a.shape)}")
    if b.shape != a.shape:
        raise ValueError(f"{nb} must have the shape of {na} {tuple(a.shape)}, got {tuple(b.shape)}")
    if not a.dtype.is_floating_point:
        raise ValueError(f"{na} must be a floating-point tensor, got {a.dtype}")
    if b.dtype != a.dtype:
        raise ValueError(f"{nb} must have dtype {a.dtype} like {na}, got {b.dtype}")
    if b.device != a.device:
        raise ValueError(f"{nb} must be on {a.device} like {na}, got {b.device}")
    if h0 is not None:
        B, _, D = a.shape
        if tuple(h0.shape) != (B, D):
            raise ValueError(f"{nh} must have shape {(B, D)} [B, D], got {tuple(h0.shape)}")
        if h0.dtype != a.dtype:
            raise ValueError(f"{nh} must have dtype {a.dtype} like {na}, got {h0.dtype}")
        if h0.device != a.device:
            raise ValueError(f"{nh} must be on {a.device} like {na}, got {h0.device}")


def _time_order(T: int, reverse: bool):
    return range(T - 1, -1, -1) if reverse else range(T)


def linear_scan_ref(a: Tensor, b: Tensor, h0: Tensor | None = None, reverse: bool = False) -> Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` as a time loop.

    Args:
        a: [B, T, D] decay coefficients.
        b: [B, T, D] inputs.
        h0: [B, D] state before the first step, or None for zeros.
        reverse: run t = T-1 .. 0 (then h0 is the state "after" the end).

    Returns:
        h: [B, T, D], every state, dtype of ``a``.
    """
    check_scan_args(a, b, h0)
    acc = compute_dtype(a.dtype)
    B, T, D = a.shape
    h = a.new_zeros((B, D), dtype=acc) if h0 is None else h0.to(acc)
    # unbind, not a[:, t]: each indexing's backward would fill a whole [B, T, D] zero tensor
    a_t, b_t = a.to(acc).unbind(1), b.to(acc).unbind(1)
    out = [None] * T
    for t in _time_order(T, reverse):
        h = a_t[t] * h + b_t[t]
        out[t] = h
    if T == 0:
        return a.new_empty((B, 0, D))
    return torch.stack(out, dim=1).to(a.dtype)


def _logaddexp(x: Tensor, y: Tensor) -> Tensor:
    """``torch.logaddexp`` whose gradient is 0, not NaN, where both inputs are ``-inf`` (a zero
    state meeting a zero input, e.g. padded steps before a reversed sequence starts)."""
    dead = (x == float("-inf")) & (y == float("-inf"))
    out = torch.logaddexp(torch.where(dead, 0.0, x), torch.where(dead, 0.0, y))
    return torch.where(dead, float("-inf"), out)


def log_linear_scan_ref(log_a: Tensor, log_b: Tensor, log_h0: Tensor | None = None,
                        reverse: bool = False) -> Tensor:
    """The scan of ``linear_scan_ref`` in log space, for positive ``a``, ``b``, ``h0``.

    ``log h_t = logaddexp(log_a_t + log h_{t-1}, log_b_t)``, i.e. ``h_t = a_t h_{t-1} + b_t`` with
    ``a = exp(log_a)`` and ``b = exp(log_b)``. ``log_h0=None`` means ``h0 = 0`` (``-inf``).

    Args:
        log_a: [B, T, D] log of the decay coefficients.
        log_b: [B, T, D] log of the inputs (``-inf`` allowed: an input of zero).
        log_h0: [B, D] log of the state before the first step, or None for ``h0 = 0``.
        reverse: run t = T-1 .. 0.

    Returns:
        log_h: [B, T, D], dtype of ``log_a``.
    """
    check_scan_args(log_a, log_b, log_h0, names=("log_a", "log_b", "log_h0"))
    acc = compute_dtype(log_a.dtype)
    B, T, D = log_a.shape
    if log_h0 is None:
        h = log_a.new_full((B, D), float("-inf"), dtype=acc)
    else:
        h = log_h0.to(acc)
    a_t, b_t = log_a.to(acc).unbind(1), log_b.to(acc).unbind(1)
    out = [None] * T
    for t in _time_order(T, reverse):
        h = _logaddexp(a_t[t] + h, b_t[t])
        out[t] = h
    if T == 0:
        return log_a.new_empty((B, 0, D))
    return torch.stack(out, dim=1).to(log_a.dtype)


# -- the backend interface of fusedrnn.scan (see fusedrnn/scan/__init__.py) -----------------------

def unavailable() -> str | None:
    """The reference backend always runs."""
    return None


def supports(device: torch.device) -> bool:
    """The reference backend runs on every device PyTorch does."""
    return True


linear_scan = linear_scan_ref
log_linear_scan = log_linear_scan_ref
