"""Which dtype a layer or cell computes in: torch.autocast, and dtypes a backend lacks.

Autocast policy (torch.nn's for RNNs on CUDA, where cuDNN's RNN and the ``*_cell`` ops sit on
autocast's lower-precision list): input, weights and states are cast to the autocast dtype, the
recurrence accumulates in float32 and keeps its cell state in float32 (every backend does), and
output and final states come back in the autocast dtype. Parameter gradients flow back through
the casts, so they arrive in the parameters' own dtype. The same policy holds on CPU for every
mode; torch.nn's CPU autocast lists only ``mkldnn_rnn_layer`` (its LSTM, and only on CPUs with
native bf16) and the GEMMs, so its GRU and LSTMCell/GRUCell stay float32 there.

A dtype the backend cannot run (float16 on the CPU backend) is computed in float32 and cast back,
as torch.nn does for float16 on CPU.

This is done in the layer rather than with ``torch.library.register_autocast`` on the custom
ops: one place covers every backend (the reference and the Triton ones are not all custom ops),
the input projection GEMM and the bias sum follow the same dtype, and torch.compile traces the
``torch.is_autocast_enabled`` read and the casts like any other tensor code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import backends

#: dtypes every backend runs natively
_NATIVE = (torch.float32, torch.float64)


def plan(x: Tensor, backend: str) -> tuple[torch.dtype, torch.dtype] | None:
    """(out_dtype, run_dtype) when the call must cast, else None (x's dtype runs as is).

    out_dtype is autocast's dtype when autocast is on for x's device (x floating point, not
    float64), else x's dtype; run_dtype is out_dtype, or float32 when the backend lacks it.
    """
    if x.dtype in _NATIVE and not torch._C._is_any_autocast_enabled():
        return None  # the common case, on every streaming cell step: two cheap reads
    amp = autocast_dtype(x)
    out = x.dtype if amp is None else amp
    run = out if out in run_dtypes(backend, x.device) else torch.float32
    return (out, run) if amp is not None or run != out else None


def autocast_dtype(x: Tensor) -> torch.dtype | None:
    """Autocast's lower-precision dtype for x's device, or None when autocast does not apply
    (off there, or x not eligible: autocast leaves float64 and integer tensors alone)."""
    dev = x.device.type
    if x.dtype == torch.float64 or not x.is_floating_point():
        return None
    if not torch.amp.is_autocast_available(dev):  # e.g. meta: asking would raise
        return None
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None


def run_dtypes(backend: str, device: torch.device) -> tuple[torch.dtype, ...]:
    """The dtypes the backend's op runs; a backend without a ``DTYPES`` list runs them all."""
    mod = backends.resolve(backend, device)
    return getattr(mod, "DTYPES", (torch.float32, torch.float64, torch.bfloat16, torch.float16))


def cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)
