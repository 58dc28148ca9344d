"""The Triton backend of the scan: a chunked kernel, ``tl.associative_scan`` inside a chunk of
``BLOCK_T`` steps and a carry across chunks, so no program ever holds the whole sequence.

One program owns one batch row and ``BLOCK_D`` adjacent channels (contiguous in memory, so every
load of a ``[BLOCK_T, BLOCK_D]`` tile is coalesced along D) and walks the sequence chunk by chunk:

    (A, S) = associative_scan over the chunk of (a_t, b_t)   # A: product of a, S: scan from zero
    h      = A * carry + S                                   # log space: logaddexp(A + carry, S)
    carry  = h[last row]

Steps past the end of the sequence are padded with the identity (a=1, b=0; log: 0, -inf) so the
last row of every tile is the state after its last real step. The backward kernel is the same scan
against the forward order over the gradients. Layout: ``[B, T, D]`` batch first; accumulation in
float32 (float64 stays float64); bf16/fp16 are cast to float32 right at the load.

Runs on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` was set before this module
was imported (``@triton.jit`` picks the interpreter when it decorates).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .reference import check_scan_args

try:
    import triton
    import triton.language as tl
except ImportError as e:  # pragma: no cover - triton is an optional dependency
    triton, _IMPORT_ERROR = None, str(e)
else:
    from .._triton_compat import patch_interpreter

    _IMPORT_ERROR = None
    patch_interpreter()  # interpreter only: loop bounds under triton 3.6 + numpy >= 2.4

#: decided once, like @triton.jit does: the interpreter runs kernels on CPU tensors
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK_T = 32   # steps per chunk: the scan tree inside a chunk is log2(BLOCK_T) deep
BLOCK_D = 32   # channels per program: 128 bytes of float32 per row of a tile
NUM_WARPS = 8  # 4 elements per thread: <= 64 registers, so occupancy is not register-bound


def unavailable() -> str | None:
    """None when Triton kernels can run here, else why not."""
    if triton is None:
        return f"triton is not installed ({_IMPORT_ERROR}); `pip install triton`"
    if not (INTERPRET or torch.cuda.is_available()):
        return "no CUDA device, and TRITON_INTERPRET=1 was not set before fusedrnn was imported"
    return None


def supports(device: torch.device) -> bool:
    """CUDA tensors; CPU tensors only under the interpreter."""
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and INTERPRET)


if triton is not None:

    @triton.jit
    def _lin_combine(a1, s1, a2, s2):
        # (a1, s1) then (a2, s2): h -> a2 * (a1 * h + s1) + s2
        return a1 * a2, a2 * s1 + s2

    @triton.jit
    def _logaddexp(x, y):
        m = tl.maximum(x, y)
        dead = m == float("-inf")  # both -inf: keep -inf instead of exp(-inf - -inf) = NaN
        d = tl.minimum(x, y) - tl.where(dead, 0.0, m)
        return tl.where(dead, m, m + tl.log(1.0 + tl.exp(d)))

    @triton.jit
    def _log_combine(a1, s1, a2, s2):
        # the same in log space: log h -> logaddexp(a2 + logaddexp(a1 + log h, s1), s2)
        return a1 + a2, _logaddexp(a2 + s1, s2)

    @triton.jit
    def scan_fwd_kernel(
        a_ptr, b_ptr, h0_ptr, h_ptr,  # a, b, h: [B, T, D]; h0: [B, D]
        T, D,
        HAS_H0: tl.constexpr, REVERSE: tl.constexpr, LOG: tl.constexpr, ACC: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid_b = tl.program_id(0)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
        mask_d = offs_d < D
        rows = tl.arange(0, BLOCK_T)  # [BLOCK_T]
        base = pid_b.to(tl.int64) * T * D
        if HAS_H0:
            carry = tl.load(h0_ptr + pid_b.to(tl.int64) * D + offs_d, mask=mask_d, other=0.0).to(ACC)
        elif LOG:
            carry = tl.full([BLOCK_D], float("-inf"), ACC)
        else:
            carry = tl.zeros([BLOCK_D], ACC)
        for k0 in range(0, T, BLOCK_T):
            k = k0 + rows  # processing steps of this chunk  [BLOCK_T]
            t = T - 1 - k if REVERSE else k
            m = (k < T)[:, None] & mask_d[None, :]  # [BLOCK_T, BLOCK_D]
            offs = base + t.to(tl.int64)[:, None] * D + offs_d[None, :]
            if LOG:
                a = tl.load(a_ptr + offs, mask=m, other=0.0).to(ACC)
                b = tl.load(b_ptr + offs, mask=m, other=float("-inf")).to(ACC)
                A, S = tl.associative_scan((a, b), 0, _log_combine)
                h = _logaddexp(A + carry[None, :], S)
            else:
                a = tl.load(a_ptr + offs, mask=m, other=1.0).to(ACC)
                b = tl.load(b_ptr + offs, mask=m, other=0.0).to(ACC)
                A, S = tl.associative_scan((a, b), 0, _lin_combine)
                h = A * carry[None, :] + S  # [BLOCK_T, BLOCK_D]
            tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=m)
            carry = tl.sum(tl.where((rows == BLOCK_T - 1)[:, None], h, 0.0), axis=0)

    @triton.jit
    def _weight(a_ptr, h_ptr, offs, h_prev, m, LOG: tl.constexpr, ACC: tl.constexpr):
        # w_t = dh_t / dh_prev: a_t, or exp(log_a_t + log_h_prev - log_h_t) in log space
        if LOG:  # masked out (no such step): log a = -inf, so w = 0 whatever h_prev is
            a = tl.load(a_ptr + offs, mask=m, other=float("-inf")).to(ACC)
            h = tl.load(h_ptr + offs, mask=m, other=0.0).to(ACC)
            dead = h == float("-inf")  # h_t = 0 exactly: no gradient reaches it
            return tl.where(dead, 0.0, tl.exp(a + h_prev - tl.where(dead, 0.0, h)))
        else:
            return tl.load(a_ptr + offs, mask=m, other=0.0).to(ACC)

    @triton.jit
    def scan_bwd_kernel(
        a_ptr, b_ptr, h_ptr, h0_ptr, gh_ptr,  # a, b, h, gh: [B, T, D]; h0: [B, D]
        da_ptr, db_ptr, dh0_ptr,  # da, db: [B, T, D]; dh0: [B, D]
        T, D,
        HAS_H0: tl.constexpr, REVERSE: tl.constexpr, LOG: tl.constexpr, ACC: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # g_t = gh_t + w_next(t) * g_next(t), walked against the forward order: k-th step is
        # t = k (forward was reversed) or T-1-k; next(t) / prev(t) are in the forward order.
        pid_b = tl.program_id(0)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
        mask_d = offs_d < D
        rows = tl.arange(0, BLOCK_T)
        base = pid_b.to(tl.int64) * T * D
        offs0 = pid_b.to(tl.int64) * D + offs_d  # [BLOCK_D] into h0 / dh0
        if HAS_H0:
            h_init = tl.load(h0_ptr + offs0, mask=mask_d, other=0.0).to(ACC)
        elif LOG:
            h_init = tl.full([BLOCK_D], float("-inf"), ACC)
        else:
            h_init = tl.zeros([BLOCK_D], ACC)
        carry = tl.zeros([BLOCK_D], ACC)  # g of the step processed last
        step = -1 if REVERSE else 1
        for k0 in range(0, T, BLOCK_T):
            k = k0 + rows  # [BLOCK_T]
            t = k if REVERSE else T - 1 - k
            valid = k < T
            m = valid[:, None] & mask_d[None, :]  # [BLOCK_T, BLOCK_D]
            offs = base + t.to(tl.int64)[:, None] * D + offs_d[None, :]
            # coefficient of g_next in g_t: w at the next forward step (none after the last)
            mn = (valid & (t + step >= 0) & (t + step < T))[:, None] & mask_d[None, :]
            h_t = tl.load(h_ptr + offs, mask=m, other=0.0).to(ACC)
            c = _weight(a_ptr, h_ptr, offs + step * D, h_t, mn, LOG, ACC)
            c = tl.where(m, c, 1.0)  # padding rows: identity, so the last row holds the carry
            x = tl.load(gh_ptr + offs, mask=m, other=0.0).to(ACC)
            C, G = tl.associative_scan((c, x), 0, _lin_combine)
            g = C * carry[None, :] + G  # [BLOCK_T, BLOCK_D]
            # state before step t in the forward order; h0 (or zero) before the first step
            mp = (valid & (t - step >= 0) & (t - step < T))[:, None] & mask_d[None, :]
            h_prev = tl.load(h_ptr + offs - step * D, mask=mp, other=0.0).to(ACC)
            h_prev = tl.where(mp, h_prev, h_init[None, :])
            if LOG:
                w = _weight(a_ptr, h_ptr, offs, h_prev, m, LOG, ACC)
                da = g * w
                lb = tl.load(b_ptr + offs, mask=m, other=0.0).to(ACC)
                dead = h_t == float("-inf")
                db = tl.where(dead, 0.0, g * tl.exp(lb - tl.where(dead, 0.0, h_t)))
            else:
                da = g * h_prev
                db = g
            tl.store(da_ptr + offs, da.to(da_ptr.dtype.element_ty), mask=m)
            tl.store(db_ptr + offs, db.to(db_ptr.dtype.element_ty), mask=m)
            carry = tl.sum(tl.where((rows == BLOCK_T - 1)[:, None], g, 0.0), axis=0)
        # dh0 = w_first * g_first; g_first is the carry after the last chunk
        offs_f = base + ((T - 1) * D if REVERSE else 0) + offs_d  # [BLOCK_D]
        w_first = _weight(a_ptr, h_ptr, offs_f, h_init, mask_d, LOG, ACC)
        tl.store(dh0_ptr + offs0, (w_first * carry).to(dh0_ptr.dtype.element_ty), mask=mask_d)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def scan_fwd(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool, log_space: bool,
             block_t: int = BLOCK_T) -> Tensor:
    """Launch the forward kernel (no autograd). Returns h [B, T, D]."""
    a, b = a.contiguous(), b.contiguous()
    B, T, D = a.shape
    h = torch.empty_like(a)
    if h.numel() == 0:
        return h
    h0c = h0.contiguous() if h0 is not None else a  # a dummy pointer when HAS_H0 is False
    grid = (B, triton.cdiv(D, BLOCK_D))
    scan_fwd_kernel[grid](a, b, h0c, h, T, D, HAS_H0=h0 is not None, REVERSE=reverse,
                          LOG=log_space, ACC=_acc(a.dtype), BLOCK_T=block_t, BLOCK_D=BLOCK_D,
                          num_warps=NUM_WARPS)
    return h


def scan_bwd(a: Tensor, b: Tensor, h: Tensor, h0: Tensor | None, grad_h: Tensor, reverse: bool,
             log_space: bool, block_t: int = BLOCK_T) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the backward kernel (no autograd). Returns (da, db, dh0)."""
    a, b, h = a.contiguous(), b.contiguous(), h.contiguous()
    gh = grad_h.to(a.dtype).contiguous()
    B, T, D = a.shape
    da, db = torch.empty_like(a), torch.empty_like(a)
    if T == 0 or B * D == 0:
        return da, db, a.new_zeros((B, D))
    dh0 = a.new_empty((B, D))
    h0c = h0.contiguous() if h0 is not None else a
    grid = (B, triton.cdiv(D, BLOCK_D))
    scan_bwd_kernel[grid](a, b, h, h0c, gh, da, db, dh0, T, D, HAS_H0=h0 is not None,
                          REVERSE=reverse, LOG=log_space, ACC=_acc(a.dtype), BLOCK_T=block_t,
                          BLOCK_D=BLOCK_D, num_warps=NUM_WARPS)
    return da, db, dh0


class _Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, reverse, log_space, block_t):
        h = scan_fwd(a, b, h0, reverse, log_space, block_t)
        ctx.save_for_backward(a, b, h0, h)
        ctx.reverse, ctx.log_space, ctx.block_t = reverse, log_space, block_t
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):
        a, b, h0, h = ctx.saved_tensors
        da, db, dh0 = scan_bwd(a, b, h, h0, grad_h, ctx.reverse, ctx.log_space, ctx.block_t)
        return da, db, (dh0 if h0 is not None else None), None, None, None


def _run(a, b, h0, reverse, log_space, block_t):
    why = unavailable()
    if why is not None:
        raise RuntimeError(f"scan backend 'triton' is not available: {why}")
    if not supports(a.device):
        raise RuntimeError(f"scan backend 'triton' runs on CUDA tensors (CPU tensors only under "
                           f"TRITON_INTERPRET=1), got a tensor on {a.device}")
    if not (isinstance(block_t, int) and block_t >= 2 and block_t & (block_t - 1) == 0):
        raise ValueError(f"block_t must be a power of two >= 2, got {block_t!r}")
    if a.shape[1] * a.shape[2] >= 2**31:  # offsets within one batch row are 32-bit
        raise ValueError(f"T * D must be < 2**31 for the triton scan, got {a.shape[1] * a.shape[2]}")
    return _Scan.apply(a, b, h0, reverse, log_space, block_t)


def linear_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, reverse: bool = False,
                block_t: int = BLOCK_T) -> Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` on the Triton kernel; see ``fusedrnn.scan.linear_scan``.

    ``block_t`` (steps per chunk, a power of two) is exposed so tests can force many chunks.
    """
    check_scan_args(a, b, h0)
    return _run(a, b, h0, reverse, False, block_t)


def log_linear_scan(log_a: Tensor, log_b: Tensor, log_h0: Tensor | None = None,
                    reverse: bool = False, block_t: int = BLOCK_T) -> Tensor:
    """The log-space scan on the Triton kernel; see ``fusedrnn.scan.log_linear_scan``."""
    check_scan_args(log_a, log_b, log_h0, names=("log_a", "log_b", "log_h0"))
    return _run(log_a, log_b, log_h0, reverse, True, block_t)
