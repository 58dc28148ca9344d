"""The reference backend: the op contract as a plain PyTorch time loop.

Every fast backend is checked against these functions, and these functions are anchored to
torch.nn (tests/test_reference.py). Autograd comes from PyTorch.

The op contract (one layer, one direction, one cell type)::

    <cell>_ref(xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None)
        xw      [T, B, G*H]  input projection of every step, bias_ih included
        w_hh    [G*H, H_out] recurrent weights (torch.nn layout and gate order)
        b_hh    [G*H] | None
        h0      [B, H_out]   H_out = P (proj_size) for a projected LSTM, else H
        c0      [B, H] | None  LSTM only (None means zeros)
        lengths [B] int64 | None  steps t >= lengths[b] keep the state and output zeros
        reverse bool         run t = lengths[b]-1 .. 0 for each sequence
        w_hr    [P, H] | None  LSTM projection
    -> (y [T, B, H_out], h_T [B, H_out], c_T [B, H] | None)

Arithmetic runs in float32 for float32/bfloat16/float16 inputs (float64 stays float64) and
the results are cast back to the dtype of ``xw``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cells import CELL_PARAMS, CELL_STATE, GATES, STEPS


def check_cell_params(mode, H, cell_params, dtype) -> None:
    """``cell_params``: the per-layer parameters ``CELL_PARAMS[mode]`` describes, in order."""
    want = CELL_PARAMS[mode]
    if not want:
        if cell_params:
            raise ValueError(f"cell_params must be None or empty for {mode}, got "
                             f"{len(cell_params)} tensors")
        return
    names = ", ".join(n for n, _ in want)
    if cell_params is None or len(cell_params) != len(want):
        got = None if cell_params is None else f"{len(cell_params)} tensors"
        raise ValueError(f"{mode} needs cell_params = [{names}], got {got}")
    for (name, k), t in zip(want, cell_params):
        if tuple(t.shape) != (k * H,):
            raise ValueError(f"cell_params {name} must have shape ({k * H},), got "
                             f"{tuple(t.shape)}")
        if t.dtype != dtype:
            raise ValueError(f"cell_params {name} must have dtype {dtype} like xw, got {t.dtype}")


def check_contract(mode, xw, w_hh, b_hh, h0, c0, lengths, w_hr, cell_params=None) -> None:
    """Validate the arguments of the op contract; every backend calls this first."""
    if mode not in GATES:
        raise ValueError(f"mode must be one of {tuple(GATES)}, got {mode!r}")
    if xw.dim() != 3:
        raise ValueError(f"xw must be 3-D [T, B, G*H], got shape {tuple(xw.shape)}")
    T, B, GH = xw.shape
    if w_hh.dim() != 2 or w_hh.shape[0] != GH:
        raise ValueError(f"w_hh must have shape [{GH}, H_out] to match xw, got {tuple(w_hh.shape)}")
    G = GATES[mode]
    if GH % G:
        raise ValueError(f"xw.size(-1) must be a multiple of {G} for {mode}, got {GH}")
    H = GH // G
    if w_hr is not None and mode != "LSTM":
        raise ValueError(f"w_hr (projection) is only supported for LSTM, got mode {mode}")
    H_out = w_hr.shape[0] if w_hr is not None else H
    if w_hr is not None and tuple(w_hr.shape) != (H_out, H):
        raise ValueError(f"w_hr must have shape [P, {H}], got {tuple(w_hr.shape)}")
    if tuple(w_hh.shape) != (GH, H_out):
        raise ValueError(f"w_hh must have shape {(GH, H_out)}, got {tuple(w_hh.shape)}")
    if b_hh is not None and tuple(b_hh.shape) != (GH,):
        raise ValueError(f"b_hh must have shape ({GH},), got {tuple(b_hh.shape)}")
    if tuple(h0.shape) != (B, H_out):
        raise ValueError(f"h0 must have shape {(B, H_out)}, got {tuple(h0.shape)}")
    if c0 is not None:
        if not CELL_STATE[mode]:
            raise ValueError(f"c0 is only used by LSTM, got mode {mode}")
        if tuple(c0.shape) != (B, H):
            raise ValueError(f"c0 must have shape {(B, H)}, got {tuple(c0.shape)}")
    if lengths is not None:
        if lengths.dim() != 1 or lengths.shape[0] != B:
            raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
        if lengths.dtype != torch.int64:
            raise ValueError(f"lengths must be int64, got {lengths.dtype}")
    for name, t in (("w_hh", w_hh), ("b_hh", b_hh), ("h0", h0), ("c0", c0), ("w_hr", w_hr)):
        if t is not None and t.dtype != xw.dtype:
            raise ValueError(f"{name} must have dtype {xw.dtype} like xw, got {t.dtype}")
    check_cell_params(mode, H, cell_params, xw.dtype)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic runs in: float64 stays float64, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _ClampGrad(torch.autograd.Function):
    """Identity forward; clamps the gradient passing back through it to [-clip, clip]."""

    @staticmethod
    def forward(ctx, x, clip):
        ctx.clip = clip
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.clamp(-ctx.clip, ctx.clip), None


def check_clip(recurrent_grad_clip) -> None:
    if recurrent_grad_clip is not None and not (
        isinstance(recurrent_grad_clip, (int, float)) and recurrent_grad_clip > 0
    ):
        raise ValueError(
            f"recurrent_grad_clip must be None or a positive number, got {recurrent_grad_clip!r}"
        )


def recurrence_ref(mode, xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None,
                   recurrent_grad_clip=None, cell_params=None):
    """The op contract for any ``mode`` in ``RNN_TANH, RNN_RELU, LSTM, GRU`` (see module doc).

    ``recurrent_grad_clip`` (None or > 0): in backward, the gradient a (live) step sends back to
    its input state h_{t-1} (and c_{t-1}) is clamped elementwise to [-clip, clip] before it is
    added to the gradient arriving from y_{t-1} (FlashRNN's ``gradient_recurrent_clipval``).
    None leaves autograd untouched.

    ``cell_params``: the extra per-layer parameters of the cells that have some (the LayerNorm
    cells: ``ops.cells.CELL_PARAMS``), passed to each step; None for the others.
    """
    check_contract(mode, xw, w_hh, b_hh, h0, c0, lengths, w_hr, cell_params)
    check_clip(recurrent_grad_clip)
    out_dtype = xw.dtype
    acc = compute_dtype(out_dtype)
    step = STEPS[mode]
    if cell_params:
        params = tuple(p.to(acc) for p in cell_params)
        step = lambda *a, _s=step: _s(*a, cell_params=params)  # noqa: E731
    T, B, GH = xw.shape
    H = GH // GATES[mode]
    xw, w_hh, h = xw.to(acc), w_hh.to(acc), h0.to(acc)
    b_hh = None if b_hh is None else b_hh.to(acc)
    w_hr = None if w_hr is None else w_hr.to(acc)
    c = None
    if CELL_STATE[mode]:
        c = xw.new_zeros(B, H) if c0 is None else c0.to(acc)
    if lengths is not None:
        lengths = lengths.to(xw.device)
    ys: list[Tensor | None] = [None] * T
    # one unbind, not xw[t] per step: each select's backward would write a full [T, B, G*H]
    # zero gradient, making the backward O(T^2)
    xs = xw.unbind(0)
    for t in range(T - 1, -1, -1) if reverse else range(T):
        if recurrent_grad_clip is None:
            h_new, c_new = step(xs[t], h, c, w_hh, b_hh, w_hr)
        else:
            clip = float(recurrent_grad_clip)
            h_in = _ClampGrad.apply(h, clip)
            c_in = None if c is None else _ClampGrad.apply(c, clip)
            h_new, c_new = step(xs[t], h_in, c_in, w_hh, b_hh, w_hr)
        if lengths is None:
            h, c, ys[t] = h_new, c_new, h_new
        else:
            # Past its end a sequence keeps its state; running t downwards, a reversed sequence
            # has not started until t < length, so one mask serves both directions.
            live = (t < lengths).unsqueeze(1)  # [B, 1]
            h = torch.where(live, h_new, h)
            if c is not None:
                c = torch.where(live, c_new, c)
            ys[t] = torch.where(live, h_new, torch.zeros_like(h_new))
    if T:
        y = torch.stack(ys, 0)  # [T, B, H_out]
    else:
        y = xw.new_zeros(0, B, h.shape[1])
    return y.to(out_dtype), h.to(out_dtype), None if c is None else c.to(out_dtype)


def rnn_tanh_ref(xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None):
    """Elman RNN with tanh: h_t = tanh(xw_t + W_hh h_{t-1} + b_hh)."""
    return recurrence_ref("RNN_TANH", xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr)


def rnn_relu_ref(xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None):
    """Elman RNN with relu: h_t = relu(xw_t + W_hh h_{t-1} + b_hh)."""
    return recurrence_ref("RNN_RELU", xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr)


def lstm_ref(xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None):
    """LSTM, gates (i, f, g, o), optional projection h_t = W_hr (o * tanh(c_t))."""
    return recurrence_ref("LSTM", xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr)


def gru_ref(xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None):
    """GRU, gates (r, z, n), n = tanh(xw_n + r * (W_hn h + b_hn))."""
    return recurrence_ref("GRU", xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr)


REFS = {"RNN_TANH": rnn_tanh_ref, "RNN_RELU": rnn_relu_ref, "LSTM": lstm_ref, "GRU": gru_ref}
