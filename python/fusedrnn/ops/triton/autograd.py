"""The fused Triton recurrence as ``torch.library`` custom ops, with fake impls and autograd.

Ladder (docs/architecture.md, convention 1): ``rnn_fwd`` / ``rnn_bwd`` (launch.py: allocate,
launch) ->
``fusedrnn::triton_recurrence_fwd`` / ``fusedrnn::triton_recurrence_bwd`` (here: custom ops, so
``torch.compile(fullgraph=True)`` keeps them as opaque nodes instead of graph-breaking) -> the
autograd formula registered on the forward op -> ``recurrence`` in ``__init__``.

The backward kernel carries dh (and dc) through reversed time and writes the gate gradients;
``d_w_hh`` and ``d_b_hh`` are then one GEMM / one reduction over all T*B rows, and ``d_w_hr``
(projection) one more GEMM against the recomputed cell outputs. These GEMMs sit in the autograd
formula, outside the bwd op, so torch.compile sees (and may fuse) them.

Custom ops cannot return None or Python objects, so an absent tensor (``c_T`` of a non-LSTM,
what the forward saves when nothing needs gradients) is an empty placeholder, and the kernels'
``plan`` is not carried from forward to backward: the bwd op recomputes it with
``launch.layer_plan``, which is deterministic in its arguments.

``torch.library.triton_op`` is not used: it needs every kernel launch wrapped by
``torch.library.wrap_triton`` inside the op body (launch.py launches them directly), and under
TRITON_INTERPRET=1 on CPU tensors torch.compile fails on a triton_op even with the launch
wrapped (fake-tensor tracing of the kernel; torch 2.13, triton 3.9), so the CI could not check
it. A persistent kernel gains nothing from Inductor seeing inside it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..cells import CELL_STATE, CELLS, GATES, SPLIT_REC
from .launch import SAVED, layer_plan, rnn_bwd, rnn_fwd

#: fp32 tensors the forward keeps for backward, in the order the fwd op returns them (its
#: ``saved`` list output); ``_saved_shapes`` gives their shapes for the fake impl
SAVED_KEYS = ("act", "hprev", "cprev", "rnorm", "stats")
_F32 = torch.float32


def _saved_shapes(mode: str, T: int, B: int, H: int, P: int) -> dict:
    """Shape of each saved tensor, None where the mode has none (cprev outside LSTM; the
    normalised W_hh h and the rows' 1/std outside the row-normalised cells)."""
    rows = CELLS[mode].row_wise
    return {"act": (T, B, SAVED[mode] * H), "hprev": (T, B, P),
            "cprev": (T, B, H) if CELL_STATE[mode] else None,
            "rnorm": (T, B, GATES[mode] * H) if rows else None,
            "stats": (T, 2, B) if rows else None}


def _sizes(mode: str, xw: Tensor, h0: Tensor):
    T, B, GH = xw.shape
    return T, B, GH // GATES[mode], h0.shape[1]


def _pack(mode: str, saved: dict | None, xw: Tensor, h0: Tensor, save: bool) -> list[Tensor]:
    """``rnn_fwd``'s saved dict as the op's tensor list: empty placeholders for absent tensors;
    shaped empties at T == 0, where ``rnn_fwd`` saves nothing but backward still runs."""
    shapes = _saved_shapes(mode, *_sizes(mode, xw, h0))
    if saved is None:
        saved = {k: None if s is None or not save else xw.new_empty(s, dtype=_F32)
                 for k, s in shapes.items()}
    extra = set(saved) - {"plan"} - set(SAVED_KEYS)
    if extra:  # launch.rnn_fwd gained a saved tensor: it must become an op output too
        raise NotImplementedError(f"triton custom op: rnn_fwd saved {sorted(extra)}, expected only "
                                  f"{SAVED_KEYS}; add them to SAVED_KEYS and _saved_shapes")
    return [xw.new_empty(0, dtype=_F32) if saved[k] is None else saved[k] for k in SAVED_KEYS]


@torch.library.custom_op("fusedrnn::triton_recurrence_fwd", mutates_args=())
def recurrence_fwd(mode: str, xw: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], h0: Tensor,
                   c0: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
                   w_hr: Optional[Tensor], save: bool, clip: float, tile_units: int,
                   reset: Optional[Tensor], zoneout: Optional[Tensor],
                   cp: Optional[Tensor] = None,
                   ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """The fused forward of one layer and direction (inputs contiguous, on one device).

    Args: the op contract (see ``fusedrnn.ops.reference``); ``save``: keep what backward needs;
    ``clip``: ``recurrent_grad_clip`` of the backward, 0.0 = off (unused here: an argument only
    so that the autograd formula receives it); ``tile_units``: force the split path with tiles
    of that many units (tests), 0 = the plan's own choice; ``reset`` [T, B] and ``zoneout``
    [T, B, Z] or None (the op contract's per-step state reset and zoneout mask); ``cp`` the
    cell_params concatenated into one vector (the LayerNorm cells), else None.
    Returns ``(y [T, B, P], h_T [B, P], c_T [B, H] (empty unless LSTM), saved)``, the first
    three in ``xw``'s dtype, ``saved`` the fp32 tensors of ``SAVED_KEYS`` (empty when absent
    or not ``save``).
    """
    T = xw.shape[0]
    capturing = xw.is_cuda and torch.cuda.is_current_stream_capturing()  # no host sync there
    if lengths is not None and lengths.numel() and not capturing and int(lengths.max()) > T:
        # checked here rather than in recurrence(): reading a value graph-breaks torch.compile
        raise ValueError(f"lengths must be <= T={T}, got max {int(lengths.max())}")
    y, h_T, c_T, saved = rnn_fwd(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, save,
                                 tile_units or None, reset, zoneout, cp)
    # T == 0 returns (copies of) the initial states: their dtype, not xw's
    c_T = xw.new_empty(0) if c_T is None else c_T.to(xw.dtype)
    return y, h_T.to(xw.dtype), c_T, _pack(mode, saved, xw, h0, save)


@recurrence_fwd.register_fake
def _fwd_fake(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, save, clip, tile_units,
              reset, zoneout, cp=None):
    T, B, H, P = _sizes(mode, xw, h0)
    saved = [xw.new_empty(0, dtype=_F32) if s is None or not save else xw.new_empty(s, dtype=_F32)
             for s in _saved_shapes(mode, T, B, H, P).values()]
    c_T = xw.new_empty(B, H) if CELL_STATE[mode] else xw.new_empty(0)
    return xw.new_empty(T, B, P), xw.new_empty(B, P), c_T, saved


@torch.library.custom_op("fusedrnn::triton_recurrence_bwd", mutates_args=())
def recurrence_bwd(mode: str, dy: Tensor, dh_T: Tensor, dc_T: Optional[Tensor],
                   saved: list[Tensor], w_hh: Tensor, lengths: Optional[Tensor], reverse: bool,
                   w_hr: Optional[Tensor], dtype: torch.dtype, clip: float, tile_units: int,
                   reset: Optional[Tensor], zoneout: Optional[Tensor],
                   cp: Optional[Tensor] = None,
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fused backward loop of one layer and direction (no weight GEMMs).

    Args: ``dy [T, B, P]`` (contiguous), ``dh_T [B, P]``, ``dc_T [B, H]`` (LSTM, else None),
    ``saved`` the fwd op's list, ``dtype`` the forward's input dtype and ``tile_units`` its
    knob (together they recompute the forward's plan), ``clip``, ``reset`` and ``zoneout`` as
    in the fwd op.
    Returns fp32 ``(d_xw [T, B, G*H], d_rec [T, B, G*H] (GRU; empty otherwise, where it equals
    d_xw), dh0 [B, P], dc0 [B, H] (LSTM, else empty), dh_tot [T, B, P] (projection, else
    empty), d_wh [T, B, G*H] and d_cp_terms [T, B, NCP*H] (row-normalised cells, else
    empty))`` as ``launch.rnn_bwd`` describes them.
    """
    T, B, P = dy.shape
    GH = w_hh.shape[0]
    H = GH // GATES[mode]

    def absent():  # a fresh placeholder each time: custom op outputs may not alias
        return dy.new_empty(0, dtype=_F32)

    if CELL_STATE[mode] and dc_T is None:
        dc_T = dh_T.new_zeros(B, H, dtype=_F32)
    if T == 0:  # nothing to run: the states' gradients pass straight through
        dc0 = dc_T.to(_F32, copy=True) if CELL_STATE[mode] else absent()
        dhtot = dy.new_zeros(0, B, P, dtype=_F32) if w_hr is not None else absent()
        rows = CELLS[mode].row_wise
        return (dy.new_zeros(0, B, GH, dtype=_F32),
                dy.new_zeros(0, B, GH, dtype=_F32) if SPLIT_REC[mode] else absent(),
                dh_T.to(_F32, copy=True), dc0, dhtot,
                dy.new_zeros(0, B, GH, dtype=_F32) if rows else absent(),
                dy.new_zeros(0, B, cp.numel(), dtype=_F32) if rows else absent())
    state = dict(zip(SAVED_KEYS, saved))
    state["plan"] = layer_plan(mode, H, P, B, dtype, w_hr is not None, w_hh.device,
                               tile_units or None)
    dxw, drec, dh0, dc0, dhtot, dwh, dcp = rnn_bwd(mode, state, w_hh, dy, dh_T, dc_T, lengths,
                                                   reverse, w_hr, clip or None, reset, zoneout,
                                                   cp)
    return (dxw, drec if SPLIT_REC[mode] else absent(), dh0, absent() if dc0 is None else dc0,
            absent() if dhtot is None else dhtot, absent() if dwh is None else dwh,
            absent() if dcp is None else dcp)


@recurrence_bwd.register_fake
def _bwd_fake(mode, dy, dh_T, dc_T, saved, w_hh, lengths, reverse, w_hr, dtype, clip,
              tile_units, reset, zoneout, cp=None):
    T, B, P = dy.shape
    GH = w_hh.shape[0]
    H = GH // GATES[mode]

    def e(*shape):
        return dy.new_empty(shape, dtype=_F32)

    rows = CELLS[mode].row_wise
    return (e(T, B, GH), e(T, B, GH) if SPLIT_REC[mode] else e(0), e(B, P),
            e(B, H) if CELL_STATE[mode] else e(0), e(T, B, P) if w_hr is not None else e(0),
            e(T, B, GH) if rows else e(0), e(T, B, cp.numel()) if rows else e(0))


def _setup_context(ctx, inputs, output):
    (mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, save, clip, tile_units, reset,
     zoneout, *rest) = inputs
    cp = rest[0] if rest else None
    # cp has a default (None), and autograd's view of the inputs omits it when it is None: the
    # backward returns one gradient per input it sees
    ctx.n_inputs = len(inputs) - (cp is None and len(rest) > 0)
    saved = output[3]
    ctx.mode, ctx.reverse, ctx.save, ctx.clip, ctx.tile_units = mode, reverse, save, clip, tile_units
    ctx.xw_dtype = xw.dtype
    # dtype of each differentiable input's gradient, None where the input is absent
    ctx.dtypes = [None if t is None else t.dtype for t in (b_hh, h0, c0, cp)]
    ctx.save_for_backward(w_hh, w_hr, lengths, reset, zoneout, cp, *saved)
    ctx.mark_non_differentiable(*saved)


def _backward(ctx, dy, dh_T, dc_T, _d_saved):
    if torch.is_grad_enabled():
        # create_graph=True: the bwd op has no derivative of its own, and silently cutting the
        # graph would give wrong higher-order gradients
        raise RuntimeError("triton backend: double backward (create_graph=True through the "
                           "recurrence) is not supported; use backend='reference' or 'cpu'")
    if not ctx.save:
        raise RuntimeError("fusedrnn::triton_recurrence_fwd ran with save=False, so it kept "
                           "nothing for backward; call it with save=True when gradients are needed")
    mode = ctx.mode
    w_hh, w_hr, lengths, reset, zoneout, cp, *saved = ctx.saved_tensors
    b_dt, h_dt, c_dt, cp_dt = ctx.dtypes
    dxw, drec, dh0, dc0, dhtot, dwh, dcp = torch.ops.fusedrnn.triton_recurrence_bwd(
        mode, dy.contiguous(), dh_T, dc_T if CELL_STATE[mode] else None, saved, w_hh, lengths,
        ctx.reverse, w_hr, ctx.xw_dtype, ctx.clip, ctx.tile_units, reset, zoneout, cp)
    st = dict(zip(SAVED_KEYS, saved))
    act, hprev, cprev = st["act"], st["hprev"], st["cprev"]
    T, B, P = hprev.shape
    GH = w_hh.shape[0]
    H = GH // GATES[mode]
    # the gradient of the recurrent pre-activation hh (b_hh's), and of W_hh h (W_hh's): the
    # same tensor unless hh normalises W_hh h (norm_recurrent)
    drec2 = (drec if SPLIT_REC[mode] else dxw).reshape(T * B, GH)
    dwh2 = dwh.reshape(T * B, GH) if CELLS[mode].norm_recurrent else drec2
    d_w_hh = dwh2.t() @ hprev.reshape(T * B, P)  # [G*H, P], fp32
    d_b_hh = None if b_dt is None else drec2.sum(0).to(b_dt)
    d_cp = None if cp_dt is None else dcp.sum((0, 1)).to(cp_dt)
    d_w_hr = None
    if w_hr is not None:
        i, f, g, o = act.chunk(4, dim=2)
        m = o * torch.tanh(f * cprev + i * g)  # [T, B, H] the projected cell output
        d_w_hr = (dhtot.reshape(T * B, P).t() @ m.reshape(T * B, H)).to(w_hr.dtype)
    d_c0 = None if c_dt is None else dc0.to(c_dt)
    grads = (None, dxw.to(ctx.xw_dtype), d_w_hh.to(w_hh.dtype), d_b_hh, dh0.to(h_dt), d_c0, None,
             None, d_w_hr, None, None, None, None, None, d_cp)
    return grads[:ctx.n_inputs]  # the same structure as the inputs (cp may be absent)


recurrence_fwd.register_autograd(_backward, setup_context=_setup_context)
