"""The Triton backend: fused persistent forward and BPTT kernels for RNN, LSTM and GRU, and
the LayerNorm cells LN_LSTM / LN_GRU (up to H=128: one program per batch row).

Entry points for ``fusedrnn.backends`` (see there): ``unavailable()``, ``supports(device)``,
``recurrence(...)``. Custom ops (``autograd.py``): ``torch.ops.fusedrnn.triton_recurrence_fwd``
(with its autograd formula) and ``triton_recurrence_bwd``. Launchers without autograd:
the mode-generic ``rnn_fwd`` / ``rnn_bwd`` (``launch.py``). Design, paths and the performance
model: ``docs/triton_backend.md``.
"""

from __future__ import annotations

import torch

from ..cells import CELL_STATE, CELLS
from ..reference import check_clip, check_contract, check_reset_zoneout

try:
    import triton  # noqa: F401

    _IMPORT_ERROR = None
except ImportError as e:  # the package still imports; unavailable() says why
    _IMPORT_ERROR = e

if _IMPORT_ERROR is None:
    from ..._triton_compat import patch_interpreter

    patch_interpreter()  # interpreter only: loop bounds under triton 3.6 + numpy >= 2.4
    from .autograd import recurrence_bwd, recurrence_fwd
    from .launch import interpreting, layer_plan, plan, rnn_bwd, rnn_fwd

__all__ = ["unavailable", "supports", "unsupported", "recurrence", "plan", "rnn_fwd", "rnn_bwd",
           "recurrence_fwd", "recurrence_bwd"]


def unavailable() -> str | None:
    """None when Triton is importable, else the reason and how to fix it."""
    if _IMPORT_ERROR is not None:
        return f"triton is not importable ({_IMPORT_ERROR}); install it with `pip install triton`"
    return None


def supports(device: torch.device) -> bool:
    """CUDA tensors; CPU tensors only under TRITON_INTERPRET=1 (the interpreter, for tests)."""
    if _IMPORT_ERROR is not None:
        return False
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def unsupported(mode, xw, w_hh, h0, w_hr=None) -> str | None:
    """Why ``recurrence`` would refuse this layer for its size (a row-wise cell wider than one
    program, or a GPU whose shared memory cannot hold a tile), else None. ``backend="auto"``
    asks before running a cell with ``cell_params`` here, and falls back visibly instead."""
    T, B, GH = xw.shape
    H = GH // CELLS[mode].gates
    try:
        layer_plan(mode, H, h0.shape[-1], B, xw.dtype, w_hr is not None, xw.device)
    except NotImplementedError as e:
        return str(e)
    return None


def recurrence(mode, xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None,
               recurrent_grad_clip=None, *, reset=None, zoneout=None, cell_params=None,
               tile_units=None):
    """The op contract of ``fusedrnn.ops.reference.recurrence_ref`` on the fused Triton kernels.

    Args:
        mode: a cell of ``fusedrnn.ops.cells.CELLS`` (torch.nn's names: RNN_TANH, ..., GRU,
            and the LayerNorm cells LN_LSTM, LN_GRU).
        xw: [T, B, G*H] input projection (bias_ih included); float32, bfloat16 or float16.
        w_hh: [G*H, P]; b_hh: [G*H] | None; h0: [B, P]; c0: [B, H] | None (LSTM).
        lengths: [B] int64 | None; reverse: run each sequence from its end.
        w_hr: [P, H] | None, LSTM projection (any size, see docs).
        recurrent_grad_clip: None | > 0, clamps the gradient carried back through the
            recurrence at every step (see ``recurrence_ref``).
        reset: [T, B] (xw's dtype, 1 = a segment starts) or None, fused into both loops (see
            ``fusedrnn.ops.reference``).
        zoneout: [T, B, P (+ H for LSTM)] keep-old mask (xw's dtype) or None, fused into both
            loops (the carried state mixes old and new per unit; no gradient w.r.t. the mask).
        cell_params: the extra per-layer parameters of the cells that have some
            (``CELLS[mode].cell_params``: the LayerNorm cells), in xw's dtype; differentiable.
            Such a cell normalises whole rows, so it runs only where one program owns every
            unit of a row: H up to ``launch.ROW_UNITS_MAX``, else NotImplementedError.
        tile_units: None, or a power of two >= 16 forcing the split path with tiles of that
            many units (a test knob; the backward recomputes the same plan). For a row-wise
            cell only its padded H, which forces the streamed one-program path.
    Returns:
        (y [T, B, P], h_T [B, P], c_T [B, H] | None), differentiable in every tensor input
        (first order: double backward raises). A ``torch.library`` custom op, so
        ``torch.compile(fullgraph=True)`` traces through it.

    Example:
        >>> y, h, c = recurrence("LSTM", xw.cuda(), w_hh.cuda(), b_hh.cuda(), h0.cuda())
    """
    check_contract(mode, xw, w_hh, b_hh, h0, c0, lengths, w_hr, cell_params)
    check_clip(recurrent_grad_clip)
    check_reset_zoneout(mode, xw, w_hh, reset, zoneout)
    if xw.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"triton backend: xw dtype must be float32, bfloat16 or float16, got {xw.dtype}")
    if not supports(xw.device):
        raise RuntimeError(f"triton backend: tensors must be on a CUDA device (or CPU under "
                           f"TRITON_INTERPRET=1), got {xw.device}")
    if lengths is not None:  # lengths <= T is checked inside the op (it reads values)
        lengths = lengths.to(xw.device).contiguous()  # the kernels read it with unit stride
    # the cell_params as one vector (cat's own backward splits the gradient again)
    cp = torch.cat([p.reshape(-1) for p in cell_params]) if CELLS[mode].cell_params else None
    ins = (xw, w_hh, b_hh, h0, c0, w_hr, cp)
    # keep the activations only when a backward can follow (custom ops cannot see that)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ins)
    clip = 0.0 if recurrent_grad_clip is None else float(recurrent_grad_clip)
    y, h_T, c_T, _ = torch.ops.fusedrnn.triton_recurrence_fwd(
        mode, *(_contig(t) for t in ins[:5]), lengths, bool(reverse), _contig(w_hr), save, clip,
        tile_units or 0, _contig(reset), _contig(zoneout), cp)
    return y, h_T, (c_T if CELL_STATE[mode] else None)


def _contig(t):
    return None if t is None else t.contiguous()
