"""Drop-in ``RNNCell``, ``LSTMCell`` and ``GRUCell``: one step of the recurrence op.

They subclass their torch.nn namesakes (parameters, init, repr, state_dict are torch.nn's) and
run the step as a length-1 call of ``fusedrnn.backends.recurrence``, so a cell and its layer
share one implementation per backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import backends
from ..ops.cells import CELL_STATE
from . import _amp, _onnx

_STEP_DTYPES = (torch.float32, torch.float64)
# backend name -> (direct binding or None, the backend's single-step op) for CPU tensors, or
# False where that backend has none (keyed on the name alone: x.device costs ~0.3 us a step)
_CPU_STEP_OPS: dict = {}


def _step_op(backend: str, device: torch.device):
    mod = backends.resolve(backend, device)  # resolved once, as the registry does
    step = getattr(mod, "cell_step", None)
    if step is None:
        return False
    # a backend may offer lower-level entry points of the same step (ops/cpu.py)
    ops = getattr(mod, "cell_step_ops", None)
    return ops() if ops is not None else (None, step)


class _FusedCellMixin:
    backend: str = "auto"

    def _set_backend(self, backend: str) -> None:
        self.backend = backends.check_backend(backend)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    def __setstate__(self, d):
        super().__setstate__(d)
        self.__dict__.setdefault("backend", "auto")

    _MODE: str | None = None  # LSTM and GRU; RNNCell's follows its nonlinearity

    def _mode(self) -> str:
        if self._MODE is not None:
            return self._MODE
        if isinstance(self, nn.LSTMCell):
            return "LSTM"
        if isinstance(self, nn.GRUCell):
            return "GRU"
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"

    def _weights(self) -> tuple:
        # straight from _parameters: nn.Module.__getattr__ costs ~0.4 us per name on every
        # streaming step; parametrized or weight-normed cells move them out, hence the fallback
        p = self._parameters
        try:
            return p["weight_ih"], p["bias_ih"], p["weight_hh"], p["bias_hh"]
        except KeyError:
            return self.weight_ih, self.bias_ih, self.weight_hh, self.bias_hh

    def _step(self, x: Tensor, states: tuple[Tensor, ...]) -> tuple[Tensor, Tensor | None]:
        """x [B, I], states ([B, H],) or ([B, H], [B, H]) -> (h [B, H], c [B, H] | None)."""
        mode = self._mode()
        # the checks sit on every streaming step: plain shape/dtype reads, messages built
        # only when one fails
        ws = self._weights()
        B, w_dtype = x.shape[0], ws[0].dtype
        if x.shape[1] != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {x.size(1)} expected {self.input_size}"
            )
        same_dtype = x.dtype == w_dtype
        for i, s in enumerate(states):
            if s.shape[0] != B:
                raise RuntimeError(
                    f"Input batch size {B} doesn't match hidden{i} batch size {s.size(0)}"
                )
            if s.dim() != 2 or s.shape[1] != self.hidden_size:
                raise RuntimeError(
                    f"hidden{i} has inconsistent hidden_size: got {s.size(1)}, "
                    f"expected {self.hidden_size}"
                )
            same_dtype = same_dtype and s.dtype == w_dtype
        # under autocast the dtypes may differ, as for torch.nn's cells: all are cast below
        if not same_dtype and _amp.autocast_dtype(x) is None:
            name, t = next((n, t) for n, t in (("input", x), *(
                (f"hx[{i}]", s) for i, s in enumerate(states))) if t.dtype != w_dtype)
            raise RuntimeError(
                f"{type(self).__name__}: expected {name} dtype {w_dtype} "
                f"(the weights' dtype), got {t.dtype}"
            )
        h0, c0 = states[0], (states[1] if CELL_STATE[mode] else None)
        if _onnx.exporting():  # a length-1 standard ONNX node instead of the custom op
            return _onnx.cell_step(mode, self, x, h0, c0)
        plan = _amp.plan(x, self.backend)
        if plan is None:
            return self._run_step(mode, x, h0, c0, None, ws)
        out, run = plan
        # everything inside runs in `run` as written; autocast must not re-cast the GEMM
        with torch.autocast(x.device.type, enabled=False):
            h, c = self._run_step(mode, x.to(run), h0.to(run), _amp.cast(c0, run), run)
        return h.to(out), _amp.cast(c, out)

    def _run_step(self, mode, x, h0, c0, dtype, ws=None):
        """One step in one dtype: the parameters (``ws``: _weights()) are cast to ``dtype``
        unless it is None."""
        w_ih, b_ih, w_hh, b_hh = ws = self._weights() if ws is None else ws
        if dtype is not None:
            w_ih, b_ih, w_hh, b_hh = (_amp.cast(t, dtype) for t in ws)
        if x.is_cpu and not torch.is_grad_enabled() and x.dtype in _STEP_DTYPES:
            ops = _CPU_STEP_OPS.get(self.backend)
            if ops is None:
                ops = _CPU_STEP_OPS[self.backend] = _step_op(self.backend, x.device)
            if ops:
                # streaming inference: the whole step (both projections) in one op (its c
                # result is unused for non-LSTM). The direct binding declines (NotImplemented)
                # whatever the dispatcher must see: subclasses, modes, the profiler; torch.compile
                # traces the op.
                fast, step = ops
                args = (mode, x, w_ih, b_ih, w_hh, b_hh, h0, c0)
                if fast is not None and not torch.compiler.is_compiling():
                    out = fast(*args)
                    if out is not NotImplemented:
                        return out
                return step(*args)
        xw = F.linear(x, w_ih, b_ih).unsqueeze(0)  # [1, B, G*H]
        _, h, c = backends.recurrence(mode, xw, w_hh, b_hh, h0, c0, backend=self.backend)
        return h, c

    def _unbatched_check(self, input: Tensor) -> bool:
        if input.dim() not in (1, 2):
            raise ValueError(
                f"{type(self).__name__}: Expected input to be 1D or 2D, got {input.dim()}D instead"
            )
        return input.dim() == 2


class _SingleStateCell(_FusedCellMixin):
    """Forward of RNNCell and GRUCell (one state tensor)."""

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        is_batched = self._unbatched_check(input)
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(
                f"{type(self).__name__}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead"
            )
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                             device=input.device)
        elif not is_batched:
            hx = hx.unsqueeze(0)
        h, _ = self._step(input, (hx,))
        return h if is_batched else h.squeeze(0)


class RNNCell(_SingleStateCell, nn.RNNCell):
    r"""Drop-in :class:`torch.nn.RNNCell`: h' = act(W_ih x + b_ih + W_hh h + b_hh).

    Args:
        input_size, hidden_size, bias=True, nonlinearity='tanh', device=None, dtype=None:
            as :class:`torch.nn.RNNCell`.
        backend: "auto" | "reference" | "cpu" | "triton" | "cuda" (keyword only).

    Inputs ``input`` [B, I] or [I], ``hx`` [B, H] or [H] or None; returns h' of hx's shape.

    Example::

        >>> cell = fusedrnn.RNNCell(10, 20)
        >>> h = cell(torch.randn(3, 10))
    """

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)


class GRUCell(_SingleStateCell, nn.GRUCell):
    r"""Drop-in :class:`torch.nn.GRUCell` (gates r, z, n as torch.nn).

    Args:
        input_size, hidden_size, bias=True, device=None, dtype=None: as torch.nn.GRUCell.
        backend: "auto" | "reference" | "cpu" | "triton" | "cuda" (keyword only).

    Inputs ``input`` [B, I] or [I], ``hx`` [B, H] or [H] or None; returns h'.

    Example::

        >>> cell = fusedrnn.GRUCell(10, 20)
        >>> h = cell(torch.randn(3, 10))
    """

    _MODE = "GRU"

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)


class LSTMCell(_FusedCellMixin, nn.LSTMCell):
    r"""Drop-in :class:`torch.nn.LSTMCell` (gates i, f, g, o as torch.nn).

    Args:
        input_size, hidden_size, bias=True, device=None, dtype=None: as torch.nn.LSTMCell.
        backend: "auto" | "reference" | "cpu" | "triton" | "cuda" (keyword only).

    Inputs ``input`` [B, I] or [I], ``hx`` = (h [B, H], c [B, H]) or None;
    returns (h', c').

    Example::

        >>> cell = fusedrnn.LSTMCell(10, 20)
        >>> h, c = cell(torch.randn(3, 10))
    """

    _MODE = "LSTM"

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None):
        is_batched = self._unbatched_check(input)
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(
                        f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead"
                    )
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                                device=input.device)
            hx = (zeros, zeros)
        elif not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        h, c = self._step(input, tuple(hx))
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))
