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
        # register the fused layer ops now, at import, not on first use inside a
        # torch.compile trace (dynamo cannot trace torch.library registration)
        minrnn_available()
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


# -- the fused minGRU/minLSTM layer: gates + scan in one C++ pass (csrc/cpu/minrnn_scan.cpp) --

_MINRNN: dict[str, bool] = {}


def minrnn_available() -> bool:
    """True when the C++ ops ``fusedrnn::minrnn_fwd`` / ``minrnn_bwd`` are registered (an older
    build of the extension lacks them; the layer then runs its unfused path)."""
    if "ok" not in _MINRNN:
        try:
            torch.ops.fusedrnn.minrnn_fwd  # noqa: B018
            torch.ops.fusedrnn.minrnn_bwd  # noqa: B018
            ok = unavailable() is None
        except (AttributeError, RuntimeError):
            ok = False
        if ok:
            _register_minrnn()
        _MINRNN["ok"] = ok
    return _MINRNN["ok"]


def _register_minrnn() -> None:
    @torch.library.register_fake("fusedrnn::minrnn_fwd")
    def _(p, bias, h0, lengths, reverse, time_major, cell, reset=None):
        B, H = (p.shape[1] if time_major else p.shape[0]), p.shape[2] // (cell + 2)
        return p.new_empty((p.shape[0], p.shape[1], H)), p.new_empty((B, H))

    @torch.library.register_fake("fusedrnn::minrnn_bwd")
    def _(p, bias, h, h0, lengths, grad_h, grad_hn, reverse, time_major, cell, reset=None):
        B, H = (p.shape[1] if time_major else p.shape[0]), p.shape[2] // (cell + 2)
        return (torch.empty_like(p, memory_format=torch.contiguous_format),
                p.new_empty((B, H)), p.new_empty((p.shape[2],)))

    def setup_context(ctx, inputs, output):
        p, bias, h0, lengths, reverse, time_major, cell, *reset = inputs
        ctx.args = (reverse, time_major, cell)
        ctx.has = (bias is not None, h0 is not None)
        ctx.n_inputs = len(inputs)
        ctx.save_for_backward(p, bias, h0, lengths, output[0], reset[0] if reset else None)

    def backward(ctx, grad_h, grad_hn):
        p, bias, h0, lengths, h, reset = ctx.saved_tensors
        dp, dh0, dbias = torch.ops.fusedrnn.minrnn_bwd(p, bias, h, h0, lengths, grad_h, grad_hn,
                                                       *ctx.args, reset)
        grads = (dp, (dbias if ctx.has[0] else None), (dh0 if ctx.has[1] else None))
        return grads + (None,) * (ctx.n_inputs - 3)

    torch.library.register_autograd("fusedrnn::minrnn_fwd", backward, setup_context=setup_context)


def minrnn_scan(p: Tensor, bias: Tensor | None, h0: Tensor | None, lengths: Tensor | None,
                reverse: bool, time_major: bool, cell: int,
                reset: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """A minGRU (``cell=0``) or minLSTM (``cell=1``) layer after its projection, gates and scan
    in one C++ pass: ``p + bias`` holds the gate inputs per row, ``[k_z | k_h]`` or
    ``[k_f | k_i | k_h]`` (p ``[T, B, G*H]`` if ``time_major`` else ``[B, T, G*H]``,
    float32/float64; bias ``[G*H]`` or None) -> ``(h, h_n)``, h in p's layout with H channels,
    h_n ``[B, H]`` the state after the last step.

    ``h_t = a_t h_{t-1} + (1 - a_t) g(k_h)`` with ``a = sigmoid(-k_z)`` (minGRU) or
    ``f / (f + i)`` (minLSTM); steps ``t >= lengths[b]`` keep the state. ``reset`` (bool,
    ``[T, B]`` if ``time_major`` else ``[B, T]``, this direction's flags): where true, a_t = 0,
    the carried state (h0 included) is dropped before the step and no gradient crosses it.
    Differentiable in ``p``, ``bias`` and ``h0`` (one fused C++ pass back)."""
    return torch.ops.fusedrnn.minrnn_fwd(p, bias, h0, lengths, bool(reverse), bool(time_major),
                                         int(cell), reset)
