"""Drop-in ``RNN``, ``LSTM`` and ``GRU`` layers.

They subclass their torch.nn namesakes, so construction, parameters (names, shapes, order,
initialisation), ``state_dict``, ``repr`` and the constructor's checks are torch.nn's own. Only
``forward`` differs: every layer and direction is one call of the recurrence op
(``fusedrnn.backends.recurrence``) on the chosen backend, with the input projection done as one
GEMM over all steps outside it. Stacking, directions, dropout between layers and packing are
plain PyTorch here.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .. import backends
from . import _amp, _onnx, _regularisers
from ..ops import cpu as cpu_ops
from ..ops.cells import CELL_STATE
from ..ops.reference import check_clip


class _FusedRNNMixin:
    """The forward pass shared by RNN, LSTM and GRU; ``mode`` selects the cell."""

    backend: str = "auto"
    recurrent_grad_clip: float | None = None
    weight_drop: float = 0.0
    dropout_mode: str = "standard"
    zoneout: float | tuple[float, float] = 0.0

    def _set_backend(self, backend: str, recurrent_grad_clip: float | None = None,
                     zoneout=0.0) -> None:
        self.backend = backends.check_backend(backend)
        check_clip(recurrent_grad_clip)
        self.recurrent_grad_clip = recurrent_grad_clip
        self.zoneout = _check_zoneout(zoneout, self.mode)

    def _zoneout_ps(self) -> tuple[float, float]:
        """(p_h, p_c) of zoneout; p_c is 0 for cells without a cell state."""
        z = self.zoneout
        return (float(z[0]), float(z[1])) if isinstance(z, tuple) else (float(z), 0.0)

    def zoneout_mask(self, seq_len: int, batch: int, dtype: torch.dtype | None = None,
                     device=None) -> Tensor | None:
        """The zoneout keep-old masks of one forward call, [L*D, T, B, Z] (Z = H_out, plus H for
        the LSTM's cell state: the op's layout, ``fusedrnn.ops.reference``), or None when
        zoneout is off.

        Training: one draw of the whole tensor, 1 with probability p_h on the h part and p_c
        on the c part: on CPU (float32/float64, the extension built) by the op
        ``fusedrnn::keep_mask`` (a counter-based generator on every thread, seeded from torch's
        generator), else ``torch.rand(...) < p``; taken by ``forward`` before anything else
        random in the call
        (dropout between layers comes after), so that under ``torch.manual_seed(s)`` this
        method called with the same seed returns the mask that the forward uses. Eval: the
        expectation, p itself (an expanded view, nothing drawn)."""
        p_h, p_c = self._zoneout_ps()
        if p_h == 0 and p_c == 0:
            return None
        h_out = self.proj_size if self.proj_size > 0 else self.hidden_size
        sizes = [(h_out, p_h)] + ([(self.hidden_size, p_c)] if CELL_STATE[self._op_mode()]
                                  else [])
        dtype = dtype if dtype is not None else self.weight_hh_l0.dtype
        device = device if device is not None else self.weight_hh_l0.device
        p = torch.cat([torch.full((n,), q, dtype=dtype, device=device) for n, q in sizes])
        shape = (self.num_layers * (2 if self.bidirectional else 1), seq_len, batch, p.numel())
        if not self.training:
            return p.expand(shape)
        if (p.device.type == "cpu" and dtype in (torch.float32, torch.float64)
                and cpu_ops.unavailable() is None):
            return cpu_ops.keep_mask(shape, p)  # every thread, counter-based
        return torch.rand(shape, dtype=dtype, device=device).lt_(p)  # 1.0 where kept

    def _set_regularisers(self, weight_drop=0.0, dropout_mode="standard") -> None:
        self.weight_drop = _regularisers.check_weight_drop(weight_drop)
        self.dropout_mode = _regularisers.check_dropout_mode(dropout_mode)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        if self.recurrent_grad_clip is not None:
            s += f", recurrent_grad_clip={self.recurrent_grad_clip}"
        if self.weight_drop:
            s += f", weight_drop={self.weight_drop}"
        if self.dropout_mode != "standard":
            s += f", dropout_mode={self.dropout_mode!r}"
        if self.zoneout:
            s += f", zoneout={self.zoneout}"
        return s

    def __setstate__(self, d):
        super().__setstate__(d)
        self.__dict__.setdefault("backend", "auto")
        self.__dict__.setdefault("recurrent_grad_clip", None)
        self.__dict__.setdefault("weight_drop", 0.0)
        self.__dict__.setdefault("dropout_mode", "standard")
        self.__dict__.setdefault("zoneout", 0.0)

    # -- the layer stack -------------------------------------------------------------------

    def _layer_params(self, layer: int, direction: int, dtype: torch.dtype | None = None):
        """(w_ih, w_hh, b_ih, b_hh, w_hr) of one layer and direction, read at call time so a
        replaced or in-place-modified weight (or functional_call) takes effect; cast to
        ``dtype`` when given (autocast, or a dtype the backend runs in float32)."""
        sfx = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        get = lambda n: getattr(self, n + sfx, None)  # noqa: E731
        w_hr = get("weight_hr") if self.proj_size > 0 else None
        ws = get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), w_hr
        return ws if dtype is None else tuple(_amp.cast(w, dtype) for w in ws)

    #: the op's cell mode when it differs from torch.nn's ``mode`` (the LayerNorm layers)
    _OP_MODE: str | None = None

    def _op_mode(self) -> str:
        return self._OP_MODE or self.mode

    def _input_side(self, x, w_ih, b_ih, b_hh, live, lin, layer, direction, dtype):
        """(xw [T, B, G*H], the op's b_hh, extra op keywords) of one layer and direction."""
        if b_ih is not None and self.mode != "GRU":
            # both biases sit outside any gate product here, so b_ih joins b_hh and
            # the projection is a plain GEMM (no [T, B, G*H] bias broadcast-copy)
            return _project(x, w_ih, None, live, lin), b_ih + b_hh, {}  # [T, B, G*H]
        return _project(x, w_ih, b_ih, live, lin), b_hh, {}  # [T, B, G*H], one GEMM, all steps

    def _run(self, x: Tensor, h0: Tensor, c0: Tensor | None, lengths: Tensor | None,
             reset: Tensor | None = None):
        """x [T, B, I] time-major, h0 [L*D, B, H_out], c0 [L*D, B, H] | None, reset [T, B]
        bool | None.

        Returns y [T, B, D*H_out], h_n [L*D, B, H_out], c_n [L*D, B, H] | None.
        """
        if _onnx.exporting():  # standard ONNX nodes instead of the custom ops
            if reset is not None or self.zoneout:
                raise NotImplementedError(
                    f"{type(self).__name__}: reset= and zoneout have no standard ONNX node; "
                    "export the model without them")
            return _onnx.run_layers(self, x, h0, c0)
        plan = _amp.plan(x, self.backend)
        if plan is None:
            return self._run_stack(x, h0, c0, lengths, None, reset)
        out, run = plan
        # everything inside runs in `run` as written; autocast must not re-cast the GEMMs
        with torch.autocast(x.device.type, enabled=False):
            y, h_n, c_n = self._run_stack(
                x.to(run), h0.to(run), _amp.cast(c0, run), lengths, run, reset
            )
        return y.to(out), h_n.to(out), _amp.cast(c_n, out)

    def _run_stack(self, x, h0, c0, lengths, dtype, reset=None):
        """``_run`` in one dtype: the parameters are cast to ``dtype`` unless it is None."""
        num_dirs = 2 if self.bidirectional else 1
        h_n, c_n = [], []
        zm = self.zoneout_mask(x.shape[0], x.shape[1], x.dtype, x.device)  # before dropout
        reset = None if reset is None else reset.to(x.dtype)
        live = _live_rows(x, lengths)
        lin = _backend_linear(self.backend, x)
        for layer in range(self.num_layers):
            outs = []
            for d in range(num_dirs):
                idx = layer * num_dirs + d
                w_ih, w_hh, b_ih, b_hh, w_hr = self._layer_params(layer, d, dtype)
                w_hh = _regularisers.drop_weight(w_hh, self.weight_drop, self.training)
                xw, b_hh, extra = self._input_side(x, w_ih, b_ih, b_hh, live, lin, layer, d,
                                                   dtype)
                y, h, c = backends.recurrence(
                    self._op_mode(), xw, w_hh, b_hh, h0[idx], None if c0 is None else c0[idx],
                    lengths, d == 1, w_hr, backend=self.backend,
                    recurrent_grad_clip=self.recurrent_grad_clip, reset=reset,
                    zoneout=None if zm is None else zm[idx], **extra,
                )
                outs.append(y)
                h_n.append(h)
                c_n.append(c)
            x = outs[0] if num_dirs == 1 else torch.cat(outs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                if self.dropout_mode == "locked":
                    x = _regularisers.locked_dropout(x, self.dropout)
                else:
                    x = F.dropout(x, p=self.dropout, training=True)
        return x, torch.stack(h_n, 0), (torch.stack(c_n, 0) if c0 is not None else None)

    # -- torch.nn's forward, with its checks and messages ----------------------------------

    def forward(self, input, hx=None, *, reset=None):
        self._update_flat_weights()
        is_lstm = self.mode == "LSTM"
        num_dirs = 2 if self.bidirectional else 1
        h_out = self.proj_size if self.proj_size > 0 else self.hidden_size
        orig_input = input
        is_batched, batch_dim = True, 0 if self.batch_first else 1
        lengths = None
        if isinstance(orig_input, PackedSequence):
            if reset is not None:
                raise ValueError(
                    f"{type(self).__name__}: reset= is not supported with a PackedSequence "
                    "input; pass the padded input [T, B, *] (or [B, T, *] with batch_first) "
                    "with reset of shape [T, B] ([B, T]) instead")
            if torch.compiler.is_exporting() or _onnx.exporting():
                raise NotImplementedError(
                    f"{type(self).__name__}: a PackedSequence input cannot be exported "
                    "(torch.export / torch.onnx.export): its batch_sizes are data that the "
                    "graph's shapes would depend on (torch.nn's layers fail there too); export "
                    "the model on padded input"
                )
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0])
        else:
            batch_sizes, sorted_indices, unsorted_indices = None, None, None
            if input.dim() not in (2, 3):
                tail = "D instead" if self.mode in ("LSTM", "GRU") else "D tensor instead"
                name = "RNN" if self.mode.startswith("RNN") else self.mode
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}{tail}")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            if hx is not None:
                hx = self._check_hx_dims(hx, is_batched)
        if hx is None:
            zeros = lambda n: torch.zeros(  # noqa: E731
                self.num_layers * num_dirs, max_batch_size, n, dtype=input.dtype,
                device=input.device,
            )
            hx = (zeros(h_out), zeros(self.hidden_size)) if is_lstm else zeros(h_out)
        self.check_forward_args(input, hx, batch_sizes)
        self._check_hx_dtype(input, hx)
        hx = self.permute_hidden(hx, sorted_indices)
        h0, c0 = hx if is_lstm else (hx, None)

        if batch_sizes is not None:
            # Packed rows are in sorted order, so padding keeps that order and hx (already
            # permuted by sorted_indices) lines up with it.
            x, lengths, packed_rows = _unpack(input, batch_sizes)
        else:
            x = input.transpose(0, 1) if self.batch_first else input  # [T, B, I]
            if x.size(0) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            if reset is not None:
                reset = _check_reset(reset, x, is_batched, self.batch_first)
        y, h_n, c_n = self._run(x, h0, c0, lengths, reset)
        hidden = (h_n, c_n) if is_lstm else h_n

        if batch_sizes is not None:
            data = _rows_of(y, packed_rows, self.backend)  # back to packed order
            out = PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)
            return out, self.permute_hidden(hidden, unsorted_indices)
        if self.batch_first:
            y = y.transpose(0, 1)
        if not is_batched:
            y = y.squeeze(batch_dim)
            hidden = (h_n.squeeze(1), c_n.squeeze(1)) if is_lstm else h_n.squeeze(1)
        return y, hidden

    def _check_hx_dtype(self, input: Tensor, hx) -> None:
        # torch.nn checks only the input's dtype (ValueError); a mismatched hx fails later in
        # its kernels with a RuntimeError worded by the kernel ("mat1 and mat2 must have the
        # same dtype", "get_mkldnn_dtype: unsupported data type"). Same exception type here,
        # worded like its input check, and skipped under autocast as that check is.
        if torch._C._is_any_autocast_enabled():
            return
        for i, h in enumerate(hx if self.mode == "LSTM" else (hx,)):
            if h.dtype != input.dtype:
                name = f"hx[{i}]" if self.mode == "LSTM" else "hx"
                raise RuntimeError(
                    f"RNN hidden state {name} dtype ({h.dtype}) does not match input dtype "
                    f"({input.dtype}). Convert it: {name}.to({input.dtype})"
                )

    def _check_hx_dims(self, hx, is_batched: bool):
        want = 3 if is_batched else 2
        kind = "batched 3-D" if is_batched else "unbatched 2-D"
        if self.mode == "LSTM":
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                )
            return hx if is_batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        if hx.dim() != want:
            raise RuntimeError(
                f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor"
            )
        return hx if is_batched else hx.unsqueeze(1)


def _check_zoneout(zoneout, mode: str):
    """The constructor's ``zoneout``: p, or (p_h, p_c) for the LSTM; each in [0, 1)."""
    lstm = mode == "LSTM"
    if isinstance(zoneout, (tuple, list)):
        if not lstm or len(zoneout) != 2:
            raise ValueError(
                "zoneout must be a float p" + (" or a pair (p_h, p_c)" if lstm else "")
                + f" for {mode}, got {zoneout!r}")
        ps = tuple(zoneout)
    else:
        ps = (zoneout,)
    for p in ps:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"zoneout probabilities must be numbers in [0, 1), got {zoneout!r}")
    if lstm:
        p_h, p_c = (float(ps[0]), float(ps[-1]))
        return (p_h, p_c) if (p_h or p_c) else 0.0
    return float(ps[0])


def _check_reset(reset, x: Tensor, is_batched: bool, batch_first: bool) -> Tensor:
    """``forward``'s ``reset`` as a bool [T, B] on x's device (x is [T, B, I])."""
    T, B = x.shape[0], x.shape[1]
    want = ((B, T) if batch_first else (T, B)) if is_batched else (T,)
    form = ("[B, T] (batch_first)" if batch_first else "[T, B]") if is_batched else \
        "[T] (unbatched input)"
    reset = _regularisers.check_reset(reset, want, form, x.device)
    if not is_batched:
        return reset.unsqueeze(1)
    return reset.t() if batch_first else reset


# Below this fraction of live (t, b) positions a packed batch's input projection runs on the live
# rows only (gather, GEMM, scatter); above it the padded GEMM is cheaper than the reshuffle.
_PACKED_PROJECTION_MAX_LIVE = 0.85


class _PackedRows:
    """Layer 0's input from a PackedSequence: its data [N, I] (time-major, sorted order) and
    the flat t * B + b position of each of its rows in the padded [T, B] batch. The input
    projection reads the packed rows as they are and writes the padded layout the recurrence
    reads; nothing builds a padded copy of the input. Has the few Tensor attributes the layer
    stack reads of its input (shape, dtype, device, ``to``)."""

    __slots__ = ("data", "rows", "T", "B")

    def __init__(self, data: Tensor, rows: Tensor, T: int, B: int):
        self.data, self.rows, self.T, self.B = data, rows, T, B

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.T, self.B, self.data.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    def is_floating_point(self) -> bool:
        return self.data.is_floating_point()

    def to(self, dtype: torch.dtype) -> "_PackedRows":
        return _PackedRows(self.data.to(dtype), self.rows, self.T, self.B)


def _unpack(data: Tensor, batch_sizes: Tensor) -> tuple[_PackedRows, Tensor, Tensor]:
    """A PackedSequence's data [N, I] and batch_sizes -> layer 0's input (:class:`_PackedRows`),
    lengths [B] (descending) and the flat t * B + b position of every packed row."""
    T, B = len(batch_sizes), int(batch_sizes[0])
    slots = torch.arange(B)
    live = slots[None, :] < batch_sizes[:, None]  # [T, B], batch_sizes is a CPU tensor
    rows = live.reshape(-1).nonzero().squeeze(1).to(data.device)
    lengths = live.sum(0).to(data.device)
    return _PackedRows(data, rows, T, B), lengths, rows


def _rows_of(y: Tensor, rows: Tensor, backend: str) -> Tensor:
    """The rows ``rows`` (flat t * B + b) of y [T, B, C], as [len(rows), C]: the backend's
    ``move_rows`` where it has one (one copy per run, no fresh pages), else indexing."""
    y2 = y.reshape(-1, y.shape[2])
    move = getattr(backends.resolve(backend, y.device), "move_rows", None)
    return y2[rows] if move is None else move(y2, rows, None, -1)


def _live_rows(x: Tensor, lengths: Tensor | None) -> Tensor | None:
    """Flat indices of the live (t, b) positions of a padded [T, B, .] batch, or None when
    every position is live or too few are padding to pay for a gather."""
    if lengths is None:
        return None
    T, B = x.shape[0], x.shape[1]
    mask = torch.arange(T, device=x.device)[:, None] < lengths.to(x.device)[None, :]  # [T, B]
    n = int(mask.sum())
    if n >= _PACKED_PROJECTION_MAX_LIVE * T * B:
        return None
    return mask.reshape(-1).nonzero().squeeze(1)


_SCRATCH = threading.local()


def _inference_buffer(rows: int, cols: int, like: Tensor) -> Tensor | None:
    """A reused [rows, cols] buffer for an inference projection (eager, CPU, no autograd), or
    None. A fresh [T, B, G*H] projection each call is fresh pages from the kernel: at T=512,
    B=32, H=64 its 8k first-touch page faults cost more than the LSTM recurrence itself. One
    buffer per thread and dtype (threads sharing a module never share it); the op consumes it
    before the next layer's projection. It keeps the largest size seen until the thread ends."""
    if (torch.is_grad_enabled() or like.device.type != "cpu" or torch.compiler.is_compiling()
            or like.dtype not in (torch.float32, torch.float64)):
        return None
    cache = getattr(_SCRATCH, "bufs", None)
    if cache is None:
        cache = _SCRATCH.bufs = {}
    key = (like.dtype, torch.is_inference_mode_enabled())
    buf = cache.get(key)
    if buf is None or buf.numel() < rows * cols:
        buf = cache[key] = torch.empty(rows * cols, dtype=like.dtype)
    return buf[: rows * cols].view(rows, cols)


def _backend_linear(backend: str, x: Tensor):
    """The chosen backend's module when it has its own input projection (``linear``: the cpu
    backend's, whose rows are batch- and thread-count invariant, and ``linear_at``, the same
    over chosen rows) for float32/float64, else None (F.linear)."""
    if x.dtype not in (torch.float32, torch.float64):
        return None
    mod = backends.resolve(backend, x.device)
    return mod if hasattr(mod, "linear") else None


def _project(x, w: Tensor, b: Tensor | None, live: Tensor | None, be=None) -> Tensor:
    """x [T, B, I] (or layer 0's :class:`_PackedRows`) @ w^T (+ b) -> [T, B, N] on the backend
    module ``be``'s ``linear`` / ``linear_at`` (default F.linear); with `live`, over those rows
    only (padding positions get zeros: the op never reads them)."""
    lin, at = getattr(be, "linear", None), getattr(be, "linear_at", None)
    T, B = x.shape[0], x.shape[1]
    if isinstance(x, _PackedRows):
        x, live, src = x.data, x.rows, None  # every packed row is live, in order
    else:
        x, src = x.reshape(T * B, x.shape[2]), live
    if live is not None and at is not None:
        return at(x, w, b, src, live, T * B).view(T, B, w.shape[0])
    if live is None and lin is not None:
        return lin(x, w, b).view(T, B, w.shape[0])
    lin = lin or F.linear
    if live is None:
        out = _inference_buffer(T * B, w.shape[0], x) if x.dtype == w.dtype else None
        if out is None:
            return F.linear(x, w, b).view(T, B, w.shape[0])
        if b is None:
            torch.mm(x, w.t(), out=out)
        else:
            torch.addmm(b, x, w.t(), out=out)
        return out.view(T, B, w.shape[0])
    # advanced indexing and index_put_: index_select / index_copy measured 2-10x slower here
    rows = lin(x if src is None else x[src], w, b)  # [n, N]
    return rows.new_zeros(T * B, rows.shape[1]).index_put_((live,), rows).view(T, B, w.shape[0])


class RNN(_FusedRNNMixin, nn.RNN):
    r"""Drop-in :class:`torch.nn.RNN` (Elman, tanh or relu) on fusedrnn's recurrence op.

    h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)

    Args:
        input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
        batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None:
            exactly as :class:`torch.nn.RNN`.
        backend: "auto" | "reference" | "cpu" | "triton" | "cuda" (keyword only).
        recurrent_grad_clip: None or > 0 (keyword only): clamp the gradient carried back
            through the recurrence (dh, dc) at every step of BPTT; None changes nothing.
        zoneout: p in [0, 1) (keyword only; 0 = off, the plain kernels). Training: each unit
            of the carried state keeps its previous value with probability p at every step,
            h_t = m * h_{t-1} + (1 - m) * h~_t (the output is the zoned h_t); eval: the
            expectation p * h_{t-1} + (1 - p) * h~_t. Masks: :meth:`zoneout_mask`.
        weight_drop: DropConnect probability in [0, 1) on every ``weight_hh_l{k}[_reverse]``
            (keyword only; AWD-LSTM's WeightDrop): in training one mask per forward call,
            scaled by 1/(1-p); none in eval; 0 (default) is off. See ``nn/_regularisers.py``.
        dropout_mode: "standard" (default, torch.nn's per-element dropout between layers) or
            "locked" (keyword only): one ``dropout`` mask per sequence and layer, shared by
            every step (variational dropout, AWD-LSTM's LockedDropout).

    Inputs: ``input`` [T, B, I] (or [B, T, I] with batch_first, [T, I] unbatched, or a
    PackedSequence) and ``hx`` [L*D, B, H] or None.
    Returns: ``output`` [T, B, D*H] (same form as the input), ``h_n`` [L*D, B, H].

    ``forward(input, hx=None, *, reset=None)``: ``reset`` [T, B] ([B, T] with batch_first, [T]
    unbatched), bool or 0/1: where true, the state carried into step t of row b is replaced by
    zeros first (hx too, at t = 0), and no gradient crosses it; the reverse direction restarts
    at the same boundaries, so each segment runs as its own sequence (docs/rl.md). Not with a
    PackedSequence.

    Example::

        >>> rnn = fusedrnn.RNN(10, 20, num_layers=2)
        >>> out, h_n = rnn(torch.randn(5, 3, 10))
    """

    def __init__(self, *args, backend: str = "auto", recurrent_grad_clip=None, zoneout=0.0,
                 weight_drop: float = 0.0, dropout_mode: str = "standard", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend, recurrent_grad_clip, zoneout)
        self._set_regularisers(weight_drop, dropout_mode)


class LSTM(_FusedRNNMixin, nn.LSTM):
    r"""Drop-in :class:`torch.nn.LSTM` on fusedrnn's recurrence op.

    Gates (i, f, g, o); c_t = f * c_{t-1} + i * g; h_t = o * tanh(c_t), projected by
    ``weight_hr`` when ``proj_size > 0``.

    Args:
        input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
        bidirectional=False, proj_size=0, device=None, dtype=None: exactly as
            :class:`torch.nn.LSTM`.
        backend: "auto" | "reference" | "cpu" | "triton" | "cuda" (keyword only).
        recurrent_grad_clip: None or > 0 (keyword only): clamp the gradient carried back
            through the recurrence (dh, dc) at every step of BPTT; None changes nothing.
        zoneout: p in [0, 1) (keyword only; 0 = off, the plain kernels). Training: each unit
            of the carried state keeps its previous value with probability p at every step,
            h_t = m * h_{t-1} + (1 - m) * h~_t (the output is the zoned h_t); eval: the
            expectation p * h_{t-1} + (1 - p) * h~_t. Masks: :meth:`zoneout_mask`.
        weight_drop, dropout_mode: as :class:`RNN` (keyword only).

    Inputs: ``input`` [T, B, I] (batch_first, unbatched or PackedSequence as torch.nn) and
    ``(h_0 [L*D, B, H_out], c_0 [L*D, B, H])`` or None.
    Returns: ``output`` [T, B, D*H_out], ``(h_n, c_n)``.
    ``forward(input, hx=None, *, reset=None)``: per-step state resets, as :class:`RNN`.
    ``zoneout`` may also be a pair (p_h, p_c): c gets its own mask (a float p means both).

    Example::

        >>> lstm = fusedrnn.LSTM(10, 20, batch_first=True, bidirectional=True)
        >>> out, (h_n, c_n) = lstm(torch.randn(3, 5, 10))
    """

    def __init__(self, *args, backend: str = "auto", recurrent_grad_clip=None, zoneout=0.0,
                 weight_drop: float = 0.0, dropout_mode: str = "standard", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend, recurrent_grad_clip, zoneout)
        self._set_regularisers(weight_drop, dropout_mode)


class GRU(_FusedRNNMixin, nn.GRU):
    r"""Drop-in :class:`torch.nn.GRU` on fusedrnn's recurrence op.

    Gates (r, z, n); n_t = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn));
    h_t = (1 - z) * n_t + z * h_{t-1}.

    Args:
        input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
        bidirectional=False, device=None, dtype=None: exactly as :class:`torch.nn.GRU`.
        backend: "auto" | "reference" | "cpu" | "triton" | "cuda" (keyword only).
        recurrent_grad_clip: None or > 0 (keyword only): clamp the gradient carried back
            through the recurrence (dh, dc) at every step of BPTT; None changes nothing.
        zoneout: p in [0, 1) (keyword only; 0 = off, the plain kernels). Training: each unit
            of the carried state keeps its previous value with probability p at every step,
            h_t = m * h_{t-1} + (1 - m) * h~_t (the output is the zoned h_t); eval: the
            expectation p * h_{t-1} + (1 - p) * h~_t. Masks: :meth:`zoneout_mask`.
        weight_drop, dropout_mode: as :class:`RNN` (keyword only).

    Returns: ``output`` [T, B, D*H], ``h_n`` [L*D, B, H].
    ``forward(input, hx=None, *, reset=None)``: per-step state resets, as :class:`RNN`.

    Example::

        >>> gru = fusedrnn.GRU(10, 20)
        >>> out, h_n = gru(torch.randn(5, 3, 10))
    """

    def __init__(self, *args, backend: str = "auto", recurrent_grad_clip=None, zoneout=0.0,
                 weight_drop: float = 0.0, dropout_mode: str = "standard", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend, recurrent_grad_clip, zoneout)
        self._set_regularisers(weight_drop, dropout_mode)
