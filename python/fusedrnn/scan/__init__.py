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

import importlib
import warnings
from types import ModuleType

import torch
from torch import Tensor

from .reference import check_scan_args, linear_scan_ref, log_linear_scan_ref

__all__ = ["linear_scan", "log_linear_scan", "linear_scan_ref", "log_linear_scan_ref",
           "available_scan_backends", "SCAN_BACKENDS"]

SCAN_BACKENDS = ("auto", "reference", "cpu", "triton")
_MODULES = {
    "reference": "fusedrnn.scan.reference",
    "cpu": "fusedrnn.scan.cpu",
    "triton": "fusedrnn.scan.triton",
}
_AUTO = {"cpu": ("cpu",), "cuda": ("triton",)}
_warned: set[tuple[str, str]] = set()
#: name -> (module | None, why unavailable | None), filled once; a dict lookup is all that
#: torch.compile has to trace on later calls (it cannot trace importlib)
_LOADED: dict[str, tuple[ModuleType | None, str | None]] = {}


def _load(name: str) -> tuple[ModuleType | None, str | None]:
    if name not in _LOADED:
        try:
            mod = importlib.import_module(_MODULES[name])
        except ImportError as e:  # e.g. triton not installed
            _LOADED[name] = (None, f"scan backend {name!r} could not be imported: {e}")
        else:
            _LOADED[name] = (mod, mod.unavailable())
    return _LOADED[name]


def available_scan_backends() -> list[str]:
    """Names of the scan backends that can run in this process (on some device)."""
    return [n for n in _MODULES if _load(n)[1] is None]


def check_scan_backend(name) -> str:
    """Validate a scan backend name; raise when it can never run in this process."""
    if not isinstance(name, str) or name not in SCAN_BACKENDS:
        raise ValueError(f"backend must be one of {SCAN_BACKENDS}, got {name!r}")
    if name != "auto":
        _, why = _load(name)
        if why is not None:
            raise RuntimeError(f"scan backend {name!r} is not available: {why}")
    return name


def resolve(name: str, device: torch.device) -> ModuleType:
    """The backend module that runs tensors on ``device`` for the requested ``name``."""
    check_scan_backend(name)
    if name == "auto":
        for cand in _AUTO.get(device.type, ()):
            mod, why = _load(cand)
            if why is None and mod.supports(device):
                return mod
            if (cand, device.type) not in _warned:
                _warned.add((cand, device.type))
                warnings.warn(f"fusedrnn.scan: backend {cand!r} is not available "
                              f"({why or 'unsupported device'}); falling back to the reference "
                              f"scan on {device.type}", stacklevel=3)
        name = "reference"
    mod, why = _load(name)
    if why is not None:
        raise RuntimeError(f"scan backend {name!r} is not available: {why}")
    if not mod.supports(device):
        raise RuntimeError(f"scan backend {name!r} does not run on {device.type} tensors")
    return mod


def _check_reverse(reverse) -> bool:
    if not isinstance(reverse, bool):
        raise TypeError(f"reverse must be a bool, got {type(reverse).__name__}")
    return reverse


_load("reference")
_load("cpu")  # the "auto" choice for CPU tensors; triton is loaded on first use


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
