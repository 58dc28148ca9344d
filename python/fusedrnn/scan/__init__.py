"""First-order linear scans, ``h_t = a_t * h_{t-1} + b_t``, parallel in time.

This is the op under parallel-in-time recurrent cells (``fusedrnn.MinGRU``, ``fusedrnn.MinLSTM``):
when the gates do not read ``h_{t-1}``, a layer is one such recurrence per channel.

Layout, everywhere in this package: **batch first**, ``a``, ``b``, ``h`` are ``[B, T, D]`` with the
channels ``D`` innermost, ``h0`` is ``[B, D]``.

Backends (``backend=``):

=============  =================================================================================
``reference``  a sequential PyTorch time loop (any device; the ground truth of the tests)
``cpu``        C++ (``csrc/cpu/scan.cpp``): chunked over time, vectorised over channels,
               parallel over batch rows and channel blocks
``triton``     CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``): a chunked kernel,
               ``tl.associative_scan`` inside a chunk of steps and a carry across chunks
``auto``       ``cpu`` for CPU tensors, ``triton`` for CUDA tensors; falls back to ``reference``
               with a one-time warning when the compiled part is missing
=============  =================================================================================

All backends accumulate in float32 for float32/bfloat16/float16 inputs (float64 stays float64),
and all have autograd: the backward is the same scan run against the forward order over the
gradients, ``g_t = dh_t + a_{t+1} g_{t+1}``, with ``da_t = h_{t-1} g_t``, ``db_t = g_t``,
``dh0 = a_first g_first``.
"""

from __future__ import annotations

from torch import Tensor

from ..backends import Registry

from .reference import check_scan_args, linear_scan_ref, log_linear_scan_ref

__all__ = ["linear_scan", "log_linear_scan", "linear_scan_ref", "log_linear_scan_ref",
           "available_scan_backends", "SCAN_BACKENDS"]

#: the scan's backends (the registry logic is fusedrnn.backends.Registry)
SCAN = Registry(
    "scan backend",
    {"reference": "fusedrnn.scan.reference", "cpu": "fusedrnn.scan.cpu",
     "triton": "fusedrnn.scan.triton"},
    {"cpu": ("cpu",), "cuda": ("triton",)},
)
SCAN_BACKENDS = SCAN.names
available_scan_backends = SCAN.available
check_scan_backend = SCAN.check
resolve = SCAN.resolve


def _check_reverse(reverse) -> bool:
    if not isinstance(reverse, bool):
        raise TypeError(f"reverse must be a bool, got {type(reverse).__name__}")
    return reverse


SCAN.load("reference")
SCAN.load("cpu")  # the "auto" choice for CPU tensors; triton is loaded on first use


def linear_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, reverse: bool = False,
                backend: str = "auto") -> Tensor:
    """Every state of the first-order recurrence ``h_t = a_t * h_{t-1} + b_t``.

    Args:
        a: ``[B, T, D]`` (batch first) coefficients, any sign.
        b: ``[B, T, D]`` inputs, same dtype and device as ``a``.
        h0: ``[B, D]`` state before the first step; None means zeros.
        reverse: run ``t = T-1 .. 0`` (``h_t = a_t h_{t+1} + b_t``, ``h0`` enters at ``t = T-1``).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"`` (see the module doc).

    Returns:
        h: ``[B, T, D]``, dtype of ``a``; the final state is ``h[:, -1]`` (``h[:, 0]`` if reversed).

    Example::

        >>> a, b = torch.rand(2, 5, 3), torch.randn(2, 5, 3)
        >>> h = fusedrnn.linear_scan(a, b)                # h[:, t] = a[:, t] * h[:, t-1] + b[:, t]
        >>> torch.allclose(h[:, 1], a[:, 1] * h[:, 0] + b[:, 1])
        True
    """
    check_scan_args(a, b, h0)
    return resolve(backend, a.device).linear_scan(a, b, h0, _check_reverse(reverse))


def log_linear_scan(log_a: Tensor, log_b: Tensor, log_h0: Tensor | None = None,
                    reverse: bool = False, backend: str = "auto") -> Tensor:
    """The scan of ``linear_scan`` in log space, for positive ``a``, ``b`` and ``h0`` (Heinsen 2023).

    Computes ``log h_t = logaddexp(log_a_t + log h_{t-1}, log_b_t)``, i.e. ``log`` of
    ``h_t = a_t h_{t-1} + b_t`` without leaving log space, which is how Feng et al. (2024) train
    minGRU/minLSTM. Heinsen writes it as ``a*_t + logcumsumexp(log_b - a*)_t`` with
    ``a* = cumsum(log_a)``; here the same recurrence runs as a chunked scan whose combine step is
    ``(A1, S1) then (A2, S2) = (A1 + A2, logaddexp(A2 + S1, S2))``, which never forms the large
    partial sums ``a*`` (so long sequences keep full precision).

    Args:
        log_a: ``[B, T, D]`` (batch first) log coefficients (``a = exp(log_a)``).
        log_b: ``[B, T, D]`` log inputs; ``-inf`` is an input of exactly zero.
        log_h0: ``[B, D]`` log of the state before the first step; None means ``h0 = 0``.
        reverse: run ``t = T-1 .. 0``.
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Returns:
        log_h: ``[B, T, D]``, dtype of ``log_a``.

    Example::

        >>> la, lb = -torch.rand(2, 5, 3), torch.randn(2, 5, 3)
        >>> h = fusedrnn.log_linear_scan(la, lb).exp()
        >>> torch.allclose(h, fusedrnn.linear_scan(la.exp(), lb.exp()))
        True
    """
    check_scan_args(log_a, log_b, log_h0, names=("log_a", "log_b", "log_h0"))
    return resolve(backend, log_a.device).log_linear_scan(log_a, log_b, log_h0,
                                                         _check_reverse(reverse))
