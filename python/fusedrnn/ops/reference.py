"""The reference backend: the op contract as a plain PyTorch time loop.

Every fast backend is checked against these functions, and these functions are anchored to
torch.nn (tests/test_reference.py). Autograd comes from PyTorch.

The op contract (one layer, one direction, one cell type)::

    recurrence_ref(mode, xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None)
        mode    a cell of ``cells.CELLS`` (torch.nn's mode names: RNN_TANH, ..., GRU)
        xw      [T, B, G*H]  input projection of every step, bias_ih included
        w_hh    [G*H, H_out] recurrent weights (torch.nn layout and gate order)
        b_hh    [G*H] | None
        h0      [B, H_out]   H_out = P (proj_size) for a projected LSTM, else H
        c0      [B, H] | None  LSTM only (None means zeros)
        lengths [B] int64 | None  steps t >= lengths[b] keep the state and output zeros
        reverse bool         run t = lengths[b]-1 .. 0 for each sequence
        w_hr    [P, H] | None  LSTM projection
        reset   [T, B] | None (keyword)  xw's dtype, 1.0 = a new segment (episode) starts at
                step t of row b: the state carried across the boundary is replaced by zeros,
                and no gradient crosses it. Forward direction: the state carried into step t
                (h0 included, for t = 0). Reverse: the state carried from step t into step
                t - 1 (reset[0] changes nothing there, nor does a reset at a padded step
                t >= lengths[b]). Each segment thus runs as its own sequence.
        zoneout [T, B, Z] | None (keyword)  the keep-old mask m of zoneout, xw's dtype, applied
                to the carried state after the cell: h_t = m * h_{t-1} + (1 - m) * h~_t, where
                h_{t-1} is the carried state (zero after a reset) and h~_t the cell's output
                (after the projection). Z = H_out for RNN/GRU; Z = H_out + H for the LSTM:
                m[..., :H_out] mixes h, m[..., H_out:] mixes c. y_t is the mixed h_t. Training
                passes a 0/1 Bernoulli(p) draw, eval the constant p (the expectation); no
                gradient w.r.t. the mask. Padded steps ignore it (the state is kept).
        cell_params list[Tensor] | None (keyword)  the extra per-layer parameters of the cells
                that have some (``cells.CELLS[mode].cell_params``: the LayerNorm cells' gains
                and bias), in that order; None for the others.
    -> (y [T, B, H_out], h_T [B, H_out], c_T [B, H] | None)

Arithmetic runs in float32 for float32/bfloat16/float16 inputs (float64 stays float64) and
the results are cast back to the dtype of ``xw``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cells import CELL_STATE, CELLS, GATES, STEPS


def check_cell_params(mode, H, cell_params, dtype) -> None:
    """``cell_params``: the per-layer parameters ``CELLS[mode].cell_params`` describes, in order."""
    want = CELLS[mode].cell_params
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
    if w_hr is not None and not CELLS[mode].projection:
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
        if not CELLS[mode].has_cell_state:
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


def check_reset_zoneout(mode, xw, w_hh, reset, zoneout) -> None:
    """Validate the op's ``reset`` and ``zoneout`` arguments (see the module doc)."""
    T, B, GH = xw.shape
    H_out = w_hh.shape[1]
    if reset is not None:
        if not isinstance(reset, torch.Tensor) or tuple(reset.shape) != (T, B):
            raise ValueError(f"reset must be a tensor of shape {(T, B)} (xw's [T, B]), got "
                             f"{tuple(reset.shape) if isinstance(reset, torch.Tensor) else reset!r}")
        if reset.dtype != xw.dtype:
            raise ValueError(f"reset must have dtype {xw.dtype} like xw, got {reset.dtype}")
    if zoneout is not None:
        Z = H_out + (GH // GATES[mode] if CELL_STATE[mode] else 0)
        if not isinstance(zoneout, torch.Tensor) or tuple(zoneout.shape) != (T, B, Z):
            raise ValueError(f"zoneout must be a mask tensor of shape {(T, B, Z)} for {mode} "
                             f"([T, B, H_out{' + H' if CELL_STATE[mode] else ''}]), got "
                             f"{tuple(zoneout.shape) if isinstance(zoneout, torch.Tensor) else zoneout!r}")
        if zoneout.dtype != xw.dtype:
            raise ValueError(f"zoneout must have dtype {xw.dtype} like xw, got {zoneout.dtype}")


def carry_keep(reset: Tensor, lengths: Tensor | None, reverse: bool) -> Tensor:
    """[T, B]: 0 where the state carried into step t (in processing order) is zeroed, else 1.

    Forward: reset[t]. Reverse: the state entering step t comes from step t + 1, so reset[t + 1]
    zeroes it. Only within a sequence: a reset at a padded step (>= lengths[b]) changes nothing,
    and a reversed sequence's first step (t = lengths[b] - 1) starts from h0."""
    T, B = reset.shape
    if reverse:
        reset = torch.cat([reset[1:], reset.new_zeros(1, B)], 0)
    if lengths is not None:
        bound = torch.arange(int(reverse), T + int(reverse), device=reset.device)[:, None]
        reset = torch.where(bound < lengths.to(reset.device)[None, :], reset,
                            torch.zeros_like(reset))
    return 1 - reset


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
                   recurrent_grad_clip=None, *, reset=None, zoneout=None, cell_params=None):
    """The op contract for any ``mode`` of ``cells.CELLS`` (see module doc).

    ``recurrent_grad_clip`` (None or > 0): in backward, the gradient a (live) step sends back to
    its input state h_{t-1} (and c_{t-1}) is clamped elementwise to [-clip, clip] before it is
    added to the gradient arriving from y_{t-1} (FlashRNN's ``gradient_recurrent_clipval``).
    None leaves autograd untouched.

    ``reset`` and ``zoneout``: see the module doc.

    ``cell_params``: the extra per-layer parameters of the cells that have some (the LayerNorm
    cells: ``cells.CELLS[mode].cell_params``), passed to each step; None for the others.
    """
    check_contract(mode, xw, w_hh, b_hh, h0, c0, lengths, w_hr, cell_params)
    check_reset_zoneout(mode, xw, w_hh, reset, zoneout)
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
    if CELLS[mode].has_cell_state:
        c = xw.new_zeros(B, H) if c0 is None else c0.to(acc)
    if lengths is not None:
        lengths = lengths.to(xw.device)
    keep = None if reset is None else carry_keep(reset.to(acc), lengths, reverse).unbind(0)
    zm = None if zoneout is None else zoneout.to(acc).unbind(0)
    H_out = h.shape[1]
    ys: list[Tensor | None] = [None] * T
    # one unbind, not xw[t] per step: each select's backward would write a full [T, B, G*H]
    # zero gradient, making the backward O(T^2)
    xs = xw.unbind(0)
    for t in range(T - 1, -1, -1) if reverse else range(T):
        if keep is not None:  # a segment boundary: the carried state restarts from zeros
            k = keep[t].unsqueeze(1)
            h = h * k
            c = None if c is None else c * k
        h_in, c_in = h, c
        if recurrent_grad_clip is not None:
            clip = float(recurrent_grad_clip)
            h_in = _ClampGrad.apply(h, clip)
            c_in = None if c is None else _ClampGrad.apply(c, clip)
        h_new, c_new = step(xs[t], h_in, c_in, w_hh, b_hh, w_hr)
        if zm is not None:  # zoneout: keep each unit's carried value where the mask says so
            m_h = zm[t][:, :H_out]
            h_new = m_h * h_in + (1 - m_h) * h_new
            if c is not None:
                m_c = zm[t][:, H_out:]
                c_new = m_c * c_in + (1 - m_c) * c_new
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

