"""The CUDA C++ backend: per step one cuBLAS GEMM (``at::addmm``) and one fused pointwise kernel.

Entry points for ``fusedrnn.backends`` (see there): ``unavailable()``, ``supports(device)``,
``recurrence(...)``. The kernels are ``csrc/cuda/*.cu`` (framework-free, calling the cell
equations of ``csrc/include/fusedrnn/cells.h``), the time loops ``csrc/cuda/loop.cpp``, and the
torch registration ``csrc/cuda/glue.cpp``; together they build ``fusedrnn._C_cuda``, which
defines the custom ops ``fusedrnn::cuda_recurrence_fwd`` / ``cuda_recurrence_bwd``. This module
adds their fake (meta) implementations and the autograd formula. Design and the compile report:
``docs/cuda_backend.md``.
"""

from __future__ import annotations

import torch

from .cells import CELL_STATE, CELLS, GATES
from .reference import check_clip, check_contract, check_reset_zoneout, compute_dtype

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

try:
    from .. import _C_cuda  # noqa: F401  registers the fusedrnn::cuda_* ops

    _LOAD_ERROR = None
except ImportError as e:
    _LOAD_ERROR = e


def unavailable() -> str | None:
    """None when the CUDA extension is loaded and a GPU is visible, else why not and the fix."""
    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None); "
                "the cuda backend needs a CUDA build of torch, then `pip install "
                "--no-build-isolation -e .` with nvcc on PATH to build fusedrnn._C_cuda")
    if _LOAD_ERROR is not None:
        return (f"the CUDA extension fusedrnn._C_cuda is not built ({_LOAD_ERROR}); rebuild with "
                "`pip install --no-build-isolation -e .` with nvcc on PATH (or CUDA_HOME set)")
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    return None


def supports(device: torch.device) -> bool:
    """CUDA tensors only."""
    return torch.device(device).type == "cuda"


def recurrence(mode, xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None,
               recurrent_grad_clip=None, *, reset=None, zoneout=None, cell_params=None):
    """The op contract of ``fusedrnn.ops.reference.recurrence_ref`` on the CUDA C++ kernels.

    Args:
        mode: a cell of ``fusedrnn.ops.cells.CELLS`` (torch.nn's names: RNN_TANH, ..., GRU).
        xw: [T, B, G*H] input projection (bias_ih included); float32, float64, bfloat16 or
            float16 (arithmetic in float32, float64 for float64).
        w_hh: [G*H, H_out]; b_hh: [G*H] | None; h0: [B, H_out]; c0: [B, H] | None (LSTM).
        lengths: [B] int64 | None (any device); reverse: run each sequence from its end.
        w_hr: [P, H] | None, LSTM projection (H_out = P).
        recurrent_grad_clip: None or > 0, clamps the gradient each live step sends back to its
            input state (see ``recurrence_ref``).
        reset: [T, B] (xw's dtype, 1 = a segment starts at that step) or None; zoneout:
            [T, B, H_out (+ H for LSTM)] keep-old mask (xw's dtype) or None. Both are fused
            into the forward and backward kernels (see ``recurrence_ref`` and docs/rl.md); no
            gradient w.r.t. either.
        cell_params: the extra per-layer parameters of the cells that have some (the LayerNorm
            cells: ``fusedrnn.ops.cells.CELLS[mode].cell_params``, xw's dtype), else None;
            differentiable. Their LayerNorms run as per-row block-reduction kernels
            (docs/cuda_backend.md, "LayerNorm cells").
    Returns:
        (y [T, B, H_out], h_T [B, H_out], c_T [B, H] | None), differentiable in every tensor
        input (cell_params included).

    Example:
        >>> y, h_T, c_T = recurrence("LSTM", xw.cuda(), w_hh.cuda(), b_hh.cuda(), h0.cuda())
    """
    if not supports(xw.device):
        raise RuntimeError(f"cuda backend: xw must be a CUDA tensor, got device {xw.device}")
    why = unavailable()
    if why is not None:
        raise RuntimeError(f"cuda backend is not available: {why}")
    return _recurrence("fusedrnn", mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr,
                       recurrent_grad_clip, reset=reset, zoneout=zoneout, cell_params=cell_params)


def _recurrence(namespace, mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, clip, *,
                reset=None, zoneout=None, cell_params=None):
    """``recurrence`` on the ops of ``namespace`` (the host emulation's in the CPU tests)."""
    check_contract(mode, xw, w_hh, b_hh, h0, c0, lengths, w_hr, cell_params)
    cp = list(cell_params) if cell_params else []
    check_reset_zoneout(mode, xw, w_hh, reset, zoneout)
    check_clip(clip)
    if xw.dtype not in _DTYPES:
        raise TypeError(f"cuda backend: xw dtype must be one of {_DTYPES}, got {xw.dtype}")
    for name, t in (("w_hh", w_hh), ("b_hh", b_hh), ("h0", h0), ("c0", c0), ("w_hr", w_hr),
                    ("reset", reset), ("zoneout", zoneout),
                    *((f"cell_params[{k}]", p) for k, p in enumerate(cp))):
        if t is not None and t.device != xw.device:
            raise ValueError(f"cuda backend: {name} must be on {xw.device} like xw, got {t.device}")
    register(namespace)
    if lengths is not None:
        lengths = lengths.to(xw.device)
    op = getattr(torch.ops, namespace).cuda_recurrence_fwd
    args = (mode, xw, w_hh, b_hh, h0, c0, lengths, bool(reverse), w_hr, float(clip or 0.0),
            _contig(reset), _contig(zoneout))
    y, h_T, c_T, *_ = op(*args, cp) if cp else op(*args)
    return y, h_T, (c_T if CELL_STATE[mode] else None)


def _contig(t):
    return None if t is None else t.contiguous()


def _ln_width(mode, H):
    """Columns per (t, b) row of the op's ``ln`` output (csrc/cuda/loop.cpp ln_width): the
    recurrent product's x^ and 1/std (norm_recurrent), then the cell state's (norm_state).
    cells.h: num_cell_params = (norm_recurrent ? 1 : 0) + (norm_state ? 2 : 0)."""
    n = len(CELLS[mode].cell_params)
    return (GATES[mode] * H + 1 if n % 2 == 1 else 0) + (H + 1 if n >= 2 else 0)


def _fwd_fake(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, grad_clip, reset, zoneout,
              cell_params=None):
    T, B, GH = xw.shape
    H = GH // GATES[mode]
    H_out = h0.shape[1]
    acc = compute_dtype(xw.dtype)
    S = CELLS[mode].saved
    lstm, proj, zoned = CELL_STATE[mode], w_hr is not None, zoneout is not None
    ld = _ln_width(mode, H)
    return (
        xw.new_empty(T, B, H_out),
        xw.new_empty(B, H_out),
        xw.new_empty(B, H) if lstm else xw.new_empty(0),
        xw.new_empty(T if S else 0, B, S * H, dtype=acc),
        xw.new_empty(T if lstm else 0, B, H, dtype=acc),
        xw.new_empty(T if proj or zoned else 0, B, H, dtype=acc),
        xw.new_empty(T if xw.dtype in (torch.bfloat16, torch.float16) else 0, B, H_out, dtype=acc),
        xw.new_empty(T if lstm and zoned else 0, B, H, dtype=acc),
        xw.new_empty(T if ld else 0, B, ld, dtype=acc),
    )


def _bwd_fake(mode, dy, dh_T, dc_T, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, grad_clip, reset,
              zoneout, y, saved, cs, hr, hs, cr, ln=None, cell_params=None):
    T, B, _ = y.shape
    GH = w_hh.shape[0]
    empty = y.new_empty(0)
    return (
        y.new_empty(T, B, GH),
        torch.empty_like(w_hh),
        empty if b_hh is None else torch.empty_like(b_hh),
        torch.empty_like(h0),
        empty if c0 is None else torch.empty_like(c0),
        empty if w_hr is None else torch.empty_like(w_hr),
        [torch.empty_like(p) for p in cell_params or ()],
    )


def _setup_context(ctx, inputs, output):
    mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, grad_clip, reset, zoneout, *rest = \
        inputs
    cell_params = list(rest[0]) if rest and rest[0] is not None else []
    # one gradient per argument the dispatcher passed (it drops a trailing cell_params=None; with
    # a Tensor[] in the schema autograd checks the count)
    ctx.n_inputs = 12 + (1 if rest and rest[0] is not None else 0)
    y, _, _, saved, cs, hr, hs, cr, ln = output
    ctx.mode, ctx.reverse, ctx.grad_clip = mode, reverse, grad_clip
    ctx.save_for_backward(w_hh, b_hh, h0, c0, lengths, w_hr, reset, zoneout, y, saved, cs, hr, hs,
                          cr, ln, *cell_params)


def _backward_for(namespace):
    def backward(ctx, dy, dh_T, dc_T, *_internal):
        w_hh, b_hh, h0, c0, lengths, w_hr, reset, zoneout, y, saved, cs, hr, hs, cr, ln, *cp = \
            ctx.saved_tensors
        op = getattr(torch.ops, namespace).cuda_recurrence_bwd
        d_xw, d_w_hh, d_b_hh, dh0, dc0, d_w_hr, d_cp = op(
            ctx.mode, dy, dh_T, dc_T if CELL_STATE[ctx.mode] else None, w_hh, b_hh, h0, c0,
            lengths, ctx.reverse, w_hr, ctx.grad_clip, reset, zoneout, y, saved, cs, hr, hs, cr,
            ln, cp or None)
        out = (None, d_xw, d_w_hh, None if b_hh is None else d_b_hh, dh0,
               None if c0 is None else dc0, None, None, None if w_hr is None else d_w_hr, None,
               None, None, list(d_cp) or None)
        return out[: ctx.n_inputs]

    return backward


_REGISTERED: set[str] = set()


def register(namespace: str = "fusedrnn") -> None:
    """Attach the fake implementations and the autograd formula to ``namespace``'s
    ``cuda_recurrence_fwd`` / ``cuda_recurrence_bwd`` (once; the ops come from C++)."""
    if namespace in _REGISTERED:
        return
    fwd, bwd = f"{namespace}::cuda_recurrence_fwd", f"{namespace}::cuda_recurrence_bwd"
    torch.library.register_fake(fwd)(_fwd_fake)
    torch.library.register_fake(bwd)(_bwd_fake)
    torch.library.register_autograd(fwd, _backward_for(namespace), setup_context=_setup_context)
    _REGISTERED.add(namespace)


if _LOAD_ERROR is None:
    register("fusedrnn")
