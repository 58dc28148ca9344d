"""The CPU backend of the scan: the C++ ops ``fusedrnn::scan_fwd`` / ``fusedrnn::scan_bwd``.

The kernels live in ``csrc/cpu/scan.cpp`` (chunked over time, vectorised over channels, parallel
over batch rows and channel blocks). Here they get a fake (meta) implementation, so
``torch.compile`` traces through them, and an autograd formula: the backward of a scan is the same
scan run against the forward order over the gradients (one fused C++ pass, ``scan_bwd``).

Layout: ``[B, T, D]`` batch first, channels innermost; ``h0`` is ``[B, D]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import check_scan_args

_REGISTERED = False
_STATE: dict[str, str | None] = {}  # "why": the cached answer of unavailable()


def _ops_error() -> str | None:
    from .._ext import extension_error

    try:
        torch.ops.fusedrnn.scan_fwd  # noqa: B018  raises when the C++ op is not registered
        torch.ops.fusedrnn.scan_bwd  # noqa: B018
    except (AttributeError, RuntimeError):
        err = extension_error()
        return err or ("the C++ extension is loaded but has no fusedrnn::scan_fwd op; rebuild it "
                       "with `pip install --no-build-isolation -e .` (csrc/cpu/scan.cpp)")
    return None


def unavailable() -> str | None:
    """None when the C++ scan ops are registered, else why not and how to build them."""
    if "why" not in _STATE:
        why = _ops_error()
        if why is None:
            _register()
        _STATE["why"] = why
    return _STATE["why"]


def supports(device: torch.device) -> bool:
    """The C++ kernels run on CPU tensors only."""
    return torch.device(device).type == "cpu"


def _register() -> None:
    """Attach the fake implementations and the autograd formula to the C++ ops (once)."""
    global _REGISTERED
    if _REGISTERED:
        return

    @torch.library.register_fake("fusedrnn::scan_fwd")
    def _(a, b, h0, reverse, log_space):
        return torch.empty_like(a, memory_format=torch.contiguous_format)

    @torch.library.register_fake("fusedrnn::scan_bwd")
    def _(a, b, h, h0, grad_h, reverse, log_space):
        B, _, D = a.shape
        like = torch.contiguous_format
        return (torch.empty_like(a, memory_format=like), torch.empty_like(a, memory_format=like),
                a.new_empty((B, D)))

    def setup_context(ctx, inputs, output):
        a, b, h0, reverse, log_space = inputs
        ctx.reverse, ctx.log_space, ctx.has_h0 = reverse, log_space, h0 is not None
        ctx.save_for_backward(a, b, h0, output)

    def backward(ctx, grad_h):
        a, b, h0, h = ctx.saved_tensors
        da, db, dh0 = torch.ops.fusedrnn.scan_bwd(a, b, h, h0, grad_h, ctx.reverse, ctx.log_space)
        return da, db, (dh0 if ctx.has_h0 else None), None, None

    torch.library.register_autograd("fusedrnn::scan_fwd", backward, setup_context=setup_context)
    _REGISTERED = True


def _run(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool, log_space: bool) -> Tensor:
    why = unavailable()
    if why is not None:
        raise RuntimeError(f"scan backend 'cpu' is not available: {why}")
    if not supports(a.device):
        raise RuntimeError(f"scan backend 'cpu' runs on CPU tensors, got a tensor on {a.device}")
    return torch.ops.fusedrnn.scan_fwd(a, b, h0, bool(reverse), log_space)


def linear_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, reverse: bool = False) -> Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` on the C++ kernel; see ``fusedrnn.scan.linear_scan``."""
    check_scan_args(a, b, h0)
    return _run(a, b, h0, reverse, False)


def log_linear_scan(log_a: Tensor, log_b: Tensor, log_h0: Tensor | None = None,
                    reverse: bool = False) -> Tensor:
    """The log-space scan on the C++ kernel; see ``fusedrnn.scan.log_linear_scan``."""
    check_scan_args(log_a, log_b, log_h0, names=("log_a", "log_b", "log_h0"))
    return _run(log_a, log_b, log_h0, reverse, True)
