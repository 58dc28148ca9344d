"""The CPU backend: the recurrence op as fused C++ time loops (``csrc/cpu``).

The ladder (docs/architecture.md, convention 1): ``torch.ops.fusedrnn.recurrence_fwd`` /
``recurrence_bwd`` (C++ kernels, no autograd) -> fake implementations and the autograd formula
registered here -> :func:`recurrence`, the backend's entry point used by ``fusedrnn.backends``
and the nn layers.

Backend interface (see ``fusedrnn.backends``): :func:`unavailable`, :func:`supports`,
:func:`recurrence`. Also :func:`cell_step`, a single-step inference op for streaming cells.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import _ext
from .cells import CELL_STATE, GATES
from .reference import (check_clip, check_contract, check_reset_zoneout, compute_dtype,
                        recurrence_ref)

DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def unavailable() -> str | None:
    """None when the C++ extension is loaded, else why not and how to build it."""
    return _ext.extension_error()


def supports(device: torch.device) -> bool:
    """The CPU backend runs on CPU tensors only."""
    return torch.device(device).type == "cpu"


def _fwd_fake(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, save=True, reset=None,
              zoneout=None, cell_params=None):
    T, B, GH = xw.shape
    H = GH // GATES[mode]
    H_out = w_hr.shape[0] if w_hr is not None else H
    # csrc/cpu/common.cpp ws_layout
    ws_units = _ext._C._ws_units(mode, save, w_hr is not None, zoneout is not None)
    acc = compute_dtype(xw.dtype)
    return (
        xw.new_empty(T, B, H_out),
        xw.new_empty(B, H_out),
        xw.new_empty(B, H) if CELL_STATE[mode] else xw.new_empty(0),
        xw.new_empty(T, B, ws_units * H, dtype=acc) if ws_units else xw.new_empty(0, dtype=acc),
    )


def _bwd_fake(mode, dy, dh_T, dc_T, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, y, ws,
              clip=0.0, reset=None, zoneout=None, cell_params=None):
    T, B, H_out = y.shape
    GH = w_hh.shape[0]
    H = GH // GATES[mode]
    e = y.new_empty
    return (
        e(T, B, GH),
        e(GH, H_out),
        e(GH) if b_hh is not None else e(0),
        e(B, H_out),
        e(B, H) if c0 is not None else e(0),
        e(w_hr.shape) if w_hr is not None else e(0),
        [e(p.shape) for p in cell_params or ()],
    )


#: the defaults of recurrence_fwd's trailing arguments: save, reset, zoneout, cell_params
_TAIL_DEFAULTS = (True, None, None, None)


def _setup_context(ctx, inputs, output):
    mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, *rest = inputs
    rest = list(rest) + list(_TAIL_DEFAULTS[len(rest):])
    reset, zoneout, cell_params = rest[1], rest[2], rest[3] or []
    # one gradient per argument the dispatcher passed: it drops the trailing arguments equal to
    # their defaults, and with a Tensor[] in the schema autograd checks the count
    given = [i for i, (v, d) in enumerate(zip(rest, _TAIL_DEFAULTS)) if v is not d]
    ctx.n_inputs = 9 + (given[-1] + 1 if given else 0)
    y, _, _, ws = output
    ctx.mode, ctx.reverse = mode, reverse
    # xw is saved (backward recomputes what ws does not hold from it): it is also what a
    # double backward needs
    ctx.save_for_backward(xw, w_hh, b_hh, h0, c0, lengths, w_hr, y, ws, reset, zoneout,
                          *cell_params)
    ctx.mark_non_differentiable(ws)
    # gradients of unused outputs stay None instead of zero tensors the kernel would read
    ctx.set_materialize_grads(False)


def _double_backward_grads(ctx, dy, dh_T, dc_T):
    """First-order gradients as a differentiable graph (create_graph=True): the reference loop
    differentiated by autograd, so that double backward (gradgradcheck, gradient penalties) is
    exact. The fused kernels serve the ordinary first-order backward."""
    xw, w_hh, b_hh, h0, c0, lengths, w_hr, _, _, reset, zoneout, *cp = ctx.saved_tensors
    ins = (xw, w_hh, b_hh, h0, c0, w_hr, *cp)
    with torch.enable_grad():
        outs = recurrence_ref(ctx.mode, *ins[:5], lengths, ctx.reverse, ins[5], reset=reset,
                              zoneout=zoneout, cell_params=cp or None)
    pairs = [(o, g) for o, g in zip(outs, (dy, dh_T, dc_T)) if o is not None and g is not None]
    wanted = [t for t in ins if t is not None and t.requires_grad]
    grads = iter(torch.autograd.grad(
        [o for o, _ in pairs], wanted, [g for _, g in pairs], create_graph=True,
        allow_unused=True,
    ) if pairs and wanted else ())
    return [next(grads) if t is not None and t.requires_grad else None for t in ins]


def _fused_grads(ctx, dy, dh_T, dc_T, clip: float = 0.0):
    """The fused backward loop: gradients of (xw, w_hh, b_hh, h0, c0, w_hr, *cell_params), None
    where the input was None."""
    mode = ctx.mode
    xw, w_hh, b_hh, h0, c0, lengths, w_hr, y, ws, reset, zoneout, *cp = ctx.saved_tensors
    d_xw, d_w_hh, d_b_hh, dh0, dc0, d_w_hr, d_cp = torch.ops.fusedrnn.recurrence_bwd(
        mode, dy, dh_T, dc_T if CELL_STATE[mode] else None, xw, w_hh, b_hh, h0, c0, lengths,
        ctx.reverse, w_hr, y, ws, clip, reset, zoneout, cp or None,
    )
    return (d_xw, d_w_hh, d_b_hh if b_hh is not None else None, dh0,
            dc0 if c0 is not None else None, d_w_hr if w_hr is not None else None, *d_cp)


def _workspace_missing(ctx) -> bool:
    """The forward ran with save=False (direct op call) though backward needs its workspace."""
    w_hr, ws, zoneout = ctx.saved_tensors[6], ctx.saved_tensors[8], ctx.saved_tensors[10]
    units = _ext._C._ws_units(ctx.mode, True, w_hr is not None, zoneout is not None)
    return ws.numel() == 0 and units > 0


def _backward(ctx, dy, dh_T, dc_T, _dws):
    # create_graph (double backward), or a forward that kept nothing: the differentiable
    # reference recomputes everything
    grads = (_double_backward_grads if torch.is_grad_enabled() or _workspace_missing(ctx)
             else _fused_grads)
    d_xw, d_w_hh, d_b_hh, dh0, dc0, d_w_hr, *d_cp = grads(ctx, dy, dh_T, dc_T)
    out = (None, d_xw, d_w_hh, d_b_hh, dh0, dc0, None, None, d_w_hr, None, None, None,
           d_cp or None)
    return out[: ctx.n_inputs]


class _ClippedRecurrence(torch.autograd.Function):
    """The same two ops with ``recurrent_grad_clip``. The clip changes only the backward, and
    the autograd formula registered on ``recurrence_fwd`` cannot receive it, so this path is a
    plain autograd.Function (torch.compile graph-breaks here; first-order gradients only)."""

    @staticmethod
    def forward(ctx, mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, clip, reset,
                zoneout, *cp):
        y, h_T, c_T, ws = torch.ops.fusedrnn.recurrence_fwd(
            mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, True, reset, zoneout,
            list(cp) or None
        )
        ctx.mode, ctx.reverse, ctx.clip = mode, reverse, clip
        ctx.save_for_backward(xw, w_hh, b_hh, h0, c0, lengths, w_hr, y, ws, reset, zoneout, *cp)
        ctx.set_materialize_grads(False)
        return y, h_T, c_T

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_T, dc_T):
        d_xw, d_w_hh, d_b_hh, dh0, dc0, d_w_hr, *d_cp = _fused_grads(ctx, dy, dh_T, dc_T,
                                                                      ctx.clip)
        return None, d_xw, d_w_hh, d_b_hh, dh0, dc0, None, None, d_w_hr, None, None, None, *d_cp


def _linear_fake(a, w, b):
    return a.new_empty(a.shape[0], w.shape[0])


def _linear_setup(ctx, inputs, output):
    a, w, b = inputs
    ctx.save_for_backward(a, w)
    ctx.has_b = b is not None


def _linear_backward(ctx, dy):
    # the same op for the input and weight gradients (each row in a fixed order), so they are
    # thread-count invariant too, and differentiable again (double backward)
    a, w = ctx.saved_tensors
    da = torch.ops.fusedrnn.rows_linear(dy, w.t(), None) if ctx.needs_input_grad[0] else None
    dw = torch.ops.fusedrnn.rows_linear(dy.t(), a.t(), None) if ctx.needs_input_grad[1] else None
    db = dy.sum(0) if ctx.has_b and ctx.needs_input_grad[2] else None
    return da, dw, db


def _at_rows(a, src, dst, out_rows):
    """rows_linear_at's (computed rows n, output rows)."""
    n = src.numel() if src is not None else dst.numel() if dst is not None else a.shape[0]
    return n, (out_rows if out_rows >= 0 else n)


def _linear_at_fake(a, w, b, src, dst, out_rows):
    return a.new_empty(_at_rows(a, src, dst, out_rows)[1], w.shape[0])


def _linear_at_setup(ctx, inputs, output):
    a, w, b, src, dst, _ = inputs
    ctx.save_for_backward(a, w, src, dst)
    ctx.has_b = b is not None


def _linear_at_backward(ctx, dy):
    # out[dst[i]] = a[src[i]] @ w^T + b: the input gradient is the same op with the indices
    # swapped; the weight gradient one rows_linear over the computed rows, gathered
    a, w, src, dst = ctx.saved_tensors
    da = dw = db = None
    if ctx.needs_input_grad[0]:
        da = torch.ops.fusedrnn.rows_linear_at(dy, w.t(), None, dst, src, a.shape[0])
    if ctx.needs_input_grad[1] or (ctx.has_b and ctx.needs_input_grad[2]):
        dy_n = dy if dst is None else move_rows(dy, dst, None, -1)
        if ctx.needs_input_grad[1]:
            a_n = a if src is None else move_rows(a, src, None, -1)
            dw = torch.ops.fusedrnn.rows_linear(dy_n.t(), a_n.t(), None)
        if ctx.has_b and ctx.needs_input_grad[2]:
            db = dy_n.sum(0)
    return da, dw, db, None, None, None


def _move_fake(a, src, dst, out_rows):
    return a.new_empty(_at_rows(a, src, dst, out_rows)[1], a.shape[1])


def _move_setup(ctx, inputs, output):
    a, src, dst, _ = inputs
    ctx.save_for_backward(src, dst)
    ctx.rows = a.shape[0]


def _move_backward(ctx, dy):
    src, dst = ctx.saved_tensors
    return move_rows(dy, dst, src, ctx.rows), None, None, None


def _step_fake(mode, x, w_ih, b_ih, w_hh, b_hh, h, c):
    return h.new_empty(h.shape), h.new_empty(h.shape) if CELL_STATE[mode] else h.new_empty(0)


if _ext.extension_error() is None:
    torch.library.register_fake("fusedrnn::recurrence_fwd")(_fwd_fake)
    torch.library.register_fake("fusedrnn::recurrence_bwd")(_bwd_fake)
    torch.library.register_fake("fusedrnn::cell_step")(_step_fake)
    torch.library.register_fake("fusedrnn::rows_linear")(_linear_fake)
    torch.library.register_fake("fusedrnn::keep_mask")(
        lambda shape, p, seed: p.new_empty(shape))
    torch.library.register_autograd(
        "fusedrnn::rows_linear", _linear_backward, setup_context=_linear_setup
    )
    torch.library.register_fake("fusedrnn::move_rows")(_move_fake)
    torch.library.register_autograd("fusedrnn::move_rows", _move_backward,
                                    setup_context=_move_setup)
    torch.library.register_fake("fusedrnn::rows_linear_at")(_linear_at_fake)
    torch.library.register_autograd(
        "fusedrnn::rows_linear_at", _linear_at_backward, setup_context=_linear_at_setup
    )
    torch.library.register_autograd(
        "fusedrnn::recurrence_fwd", _backward, setup_context=_setup_context
    )


def _check(mode, tensors) -> None:
    for name, t in tensors:
        if t is None:
            continue
        if t.device.type != "cpu":
            raise ValueError(f"backend 'cpu' needs CPU tensors, got {name} on {t.device}")
        if name != "lengths" and t.dtype not in DTYPES:
            raise ValueError(
                f"backend 'cpu' supports dtypes {DTYPES}, got {name} with dtype {t.dtype}"
            )


def recurrence(mode, xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None,
               recurrent_grad_clip=None, *, reset=None, zoneout=None, cell_params=None):
    """The op contract of :func:`fusedrnn.ops.reference.recurrence_ref` on the fused CPU loop.

    Args:
        mode: a cell of ``fusedrnn.ops.cells.CELLS`` (torch.nn's names: RNN_TANH, ..., GRU).
        xw: [T, B, G*H] input projection of every step, ``b_ih`` included.
        w_hh: [G*H, H_out] recurrent weights (torch.nn layout and gate order).
        b_hh: [G*H] or None.
        h0: [B, H_out] initial hidden state (H_out = P with a projection, else H).
        c0: [B, H] or None (LSTM only; None means zeros).
        lengths: [B] int64 or None; steps t >= lengths[b] keep the state and output zeros.
            Sorted (descending) lengths run only the live rows; unsorted lengths are masked.
        reverse: run t = lengths[b]-1 .. 0 per sequence.
        w_hr: [P, H] or None, LSTM projection.
        recurrent_grad_clip: None or > 0; clamps the gradient each live step sends back to
            its input state (see ``recurrence_ref``).
        reset: [T, B] (xw's dtype, 1 = a segment starts) or None; zoneout: [T, B, Z] keep-old
            mask or None (see ``fusedrnn.ops.reference``). Both fused into the loops.
        cell_params: the extra per-layer parameters of the cells that have some (the LayerNorm
            cells: ``fusedrnn.ops.cells.CELLS[mode].cell_params``), else None; differentiable.

    Returns:
        (y [T, B, H_out], h_T [B, H_out], c_T [B, H] or None), differentiable with respect to
        xw, w_hh, b_hh, h0, c0, w_hr and cell_params. float32, float64 and bfloat16 (computed
        in float32).

    Example::

        >>> xw = torch.randn(5, 2, 4 * 8)
        >>> y, h, c = recurrence("LSTM", xw, torch.randn(32, 8), None, torch.zeros(2, 8))
    """
    if unavailable() is not None:
        raise RuntimeError(f"backend 'cpu' is not available: {unavailable()}")
    check_contract(mode, xw, w_hh, b_hh, h0, c0, lengths, w_hr, cell_params)
    cp = list(cell_params) if cell_params else []
    _check(mode, (("xw", xw), ("w_hh", w_hh), ("b_hh", b_hh), ("h0", h0), ("c0", c0),
                  ("lengths", lengths), ("w_hr", w_hr),
                  *((f"cell_params[{k}]", p) for k, p in enumerate(cp))))
    check_clip(recurrent_grad_clip)
    check_reset_zoneout(mode, xw, w_hh, reset, zoneout)
    _check(mode, (("reset", reset), ("zoneout", zoneout)))
    if recurrent_grad_clip is not None:
        y, h_T, c_T = _ClippedRecurrence.apply(mode, xw, w_hh, b_hh, h0, c0, lengths,
                                               bool(reverse), w_hr, float(recurrent_grad_clip),
                                               reset, zoneout, *cp)
    else:
        # inference keeps nothing for backward (no cell states, no activations)
        save = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (xw, w_hh, b_hh, h0, c0, w_hr, *cp))
        y, h_T, c_T, _ = torch.ops.fusedrnn.recurrence_fwd(
            mode, xw, w_hh, b_hh, h0, c0, lengths, bool(reverse), w_hr, save, reset, zoneout,
            cp or None
        )
    return y, h_T, (c_T if CELL_STATE[mode] else None)


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``F.linear(x, w, b)`` for the layers' input projections on this backend: x [..., K],
    w [N, K], b [N] or None -> [..., N], differentiable (input, weight and bias).

    Every output row is reduced in a fixed order and rows are split over threads, so a row's
    result is bitwise the same alone or in a batch and with any thread count (MKL's GEMM, which
    F.linear calls, is neither on every CPU). float32, float64, bfloat16 (computed in float32).
    """
    y = torch.ops.fusedrnn.rows_linear(x.reshape(-1, x.shape[-1]), w, b)
    return y.view(*x.shape[:-1], w.shape[0])


def linear_at(x: Tensor, w: Tensor, b: Tensor | None, src: Tensor | None, dst: Tensor | None,
              out_rows: int) -> Tensor:
    """:func:`linear` over chosen rows: ``out[dst[i]] = x[src[i]] @ w^T + b`` for every i, the
    other ``out_rows`` rows zeros (x [M, K], src / dst int64 [n] or None for 0..n-1). A packed
    batch's input projection: its live rows only, written straight into the padded layout the
    recurrence reads (rows in runs, as a packed batch's steps are, cost one micro-kernel call
    per run). Differentiable in x, w and b; each row bitwise as :func:`linear` computes it."""
    return torch.ops.fusedrnn.rows_linear_at(x, w, b, src, dst, out_rows)


def move_rows(x: Tensor, src: Tensor | None, dst: Tensor | None, out_rows: int) -> Tensor:
    """``out[dst[i]] = x[src[i]]`` for every i, the other ``out_rows`` rows zeros (x [M, C];
    src / dst int64 [n] or None for 0..n-1; ``out_rows`` -1: n). A gather (dst None) or a
    scatter (src None) of whole rows in one pass, one copy per run of consecutive rows, into a
    buffer of the CPU backend's cache (no fresh pages). Differentiable: its backward is the same
    move with src and dst swapped."""
    return torch.ops.fusedrnn.move_rows(x, src, dst, out_rows)


def cell_step(mode: str, x: Tensor, w_ih: Tensor, b_ih: Tensor | None, w_hh: Tensor,
              b_hh: Tensor | None, h: Tensor, c: Tensor | None = None):
    """One inference step of a cell, input projection included, as a single C++ op.

    For streaming (one call per time step, small batch) where per-op dispatch dominates. Not
    differentiable: use :func:`recurrence` when gradients are needed.

    Args:
        mode: a cell of ``fusedrnn.ops.cells.CELLS`` (torch.nn's names: RNN_TANH, ..., GRU).
        x: [B, I]; w_ih: [G*H, I]; b_ih: [G*H] or None; w_hh: [G*H, H]; b_hh: [G*H] or None;
        h: [B, H]; c: [B, H] for LSTM, else None. float32 or float64, CPU.

    Returns:
        (h' [B, H], c' [B, H] or None).

    Example::

        >>> cell = torch.nn.LSTMCell(3, 4)
        >>> h, c = cell_step("LSTM", torch.randn(1, 3), cell.weight_ih, cell.bias_ih,
        ...                  cell.weight_hh, cell.bias_hh, torch.zeros(1, 4), torch.zeros(1, 4))
    """
    h_new, c_new = torch.ops.fusedrnn.cell_step(mode, x, w_ih, b_ih, w_hh, b_hh, h, c)
    return h_new, (c_new if CELL_STATE[mode] else None)


def cell_step_ops():
    """(direct binding or None, op) of the single-step kernel, for the nn cells' streaming path:
    the op overload itself (one Python frame less than :func:`cell_step`; its unused c is an
    empty tensor for non-LSTM cells), and ahead of it the extension's direct binding of the same
    kernel (``csrc/cpu/cell_step_py.cpp``: ~1 us less per step; it returns NotImplemented for
    whatever the dispatcher must see: tensor subclasses, modes, the profiler)."""
    return getattr(_ext._C, "_cell_step", None), torch.ops.fusedrnn.cell_step.default


def keep_mask(shape, p: Tensor) -> Tensor:
    """A 0/1 mask of ``shape`` (last size ``p.numel()``), 1 with probability ``p[z]`` in lane
    z, drawn by the op ``fusedrnn::keep_mask`` (csrc/cpu/bernoulli.cpp: a counter-based
    generator on every thread) from a seed taken from torch's default generator, so
    ``torch.manual_seed`` reproduces it. float32/float64 CPU ``p``."""
    seed = torch.randint(-(2 ** 63), 2 ** 63 - 1, (), dtype=torch.int64)
    return torch.ops.fusedrnn.keep_mask(list(shape), p, seed)

