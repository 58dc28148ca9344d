"""minGRU and minLSTM: recurrent layers that train in parallel over time.

Feng, Tung, Ahmed, Bengio, Hajimirsadeghi (2024), "Were RNNs All We Needed?", arXiv:2410.01201.
Their gates read only ``x_t``, not ``h_{t-1}``, so a layer is the first-order linear recurrence
``h_t = a_t * h_{t-1} + b_t`` per channel, which ``fusedrnn.linear_scan`` computes in parallel.
Stacking, directions, dropout between layers and packing are plain PyTorch here, as in ``rnn.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..scan import check_scan_backend, linear_scan, log_linear_scan
from ..scan import resolve as resolve_scan
from ._regularisers import check_reset as _check_reset

__all__ = ["MinGRU", "MinLSTM", "g", "log_g"]



def _cpu_linear(x: Tensor, w: Tensor) -> Tensor:
    """x @ w^T on CPU by the cpu backend's ``linear`` when it is built, else F.linear."""
    from ..ops import cpu as cpu_ops

    if cpu_ops.unavailable() is None and x.dtype == w.dtype:
        return cpu_ops.linear(x, w)
    return F.linear(x, w)

class _G(torch.autograd.Function):
    """g or log_g with a hand-written derivative: autograd's own derivative of ``maximum`` goes
    through boolean selects (ties, masks), several times slower on CPU than the whole forward."""

    @staticmethod
    def forward(ctx, x: Tensor, log: bool) -> Tensor:
        ctx.save_for_backward(x)
        ctx.log = log
        if log:  # log(relu(x + 0.5)) is -inf where x <= -0.5, never the larger one there
            return torch.maximum(torch.log(F.relu(x + 0.5)), F.logsigmoid(x))
        return torch.maximum(x + 0.5, torch.sigmoid(x))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        step = (x >= 0).to(x.dtype)  # 1 on the x + 0.5 branch, 0 on the sigmoid branch
        if ctx.log:  # d log(x + 0.5) = 1 / (x + 0.5); d logsigmoid(x) = sigmoid(-x)
            d = step / (F.relu(x) + 0.5) + (1 - step) * torch.sigmoid(-x)
        else:  # 1 on the linear branch; sigmoid' = s (1 - s) <= 1/4 < 1 on the other
            s = torch.sigmoid(x)
            d = torch.maximum(s * (1 - s), step)
        return grad * d, None


class _Coefficients(torch.autograd.Function):
    """(u, k_h) -> (a, b) = (sigmoid(-u), sigmoid(u) * g(k_h)) in few passes and allocations.

    On CPU these tensors are [B, T, H] and each fresh one costs page faults as well as a pass
    (at T=2048 more than half the layer's time went to the kernel zeroing new pages), so the
    forward writes in place where it can and the backward is two fused expressions:
    da/du = -s(1-s), db/du = s(1-s) g, db/dk_h = s g'(k_h), with s = sigmoid(u) and s(1-s) = s a.
    """

    @staticmethod
    def forward(ctx, u: Tensor, k_h: Tensor):
        a = torch.neg(u).sigmoid_()
        s = torch.sigmoid(u)
        gx = torch.sigmoid(k_h)
        torch.maximum(k_h + 0.5, gx, out=gx)  # g(k_h), see g()
        b = s * gx
        ctx.save_for_backward(a, s, gx, k_h)
        return a, b

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, da: Tensor | None, db: Tensor | None):
        a, s, gx, k_h = ctx.saved_tensors
        da = torch.zeros_like(a) if da is None else da
        db = torch.zeros_like(a) if db is None else db
        du = (db * gx).sub_(da).mul_(s).mul_(a)
        # g'(k_h): 1 where k_h >= 0, else sigmoid' = g (1 - g) (there g = sigmoid(k_h) <= 1/2)
        dg = torch.addcmul(gx, gx, gx, value=-1)
        torch.maximum(dg, (k_h >= 0).to(dg.dtype), out=dg)
        return du, dg.mul_(db).mul_(s)


def g(x: Tensor) -> Tensor:
    """The paper's activation, positive everywhere: ``x + 0.5`` if ``x >= 0`` else ``sigmoid(x)``.

    Computed as ``max(x + 0.5, sigmoid(x))``, the same function (``x + 0.5 >= sigmoid(x)`` exactly
    when ``x >= 0``: sigmoid lies below its tangent ``0.5 + x/4`` there and above it for
    ``x < 0``), because a select through a boolean mask is several times slower on CPU.
    """
    return _G.apply(x, False)


def log_g(x: Tensor) -> Tensor:
    """``log(g(x))`` without leaving log space: ``log(x + 0.5)`` if ``x >= 0`` else ``logsigmoid(x)``."""
    return _G.apply(x, True)


class _MinRNNBase(nn.Module):
    """The layer stack shared by MinGRU and MinLSTM; a subclass defines ``GATES`` and ``_mix``."""

    GATES: int  # blocks of the input projection: [mixing gate(s) ..., candidate]

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 log_space: bool = False, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        self.dropout, self.log_space = float(dropout), bool(log_space)
        self.backend = check_scan_backend(backend)
        dirs = 2 if bidirectional else 1
        kw = dict(device=device, dtype=dtype)
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size * dirs
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                self.register_parameter("weight_ih" + sfx, nn.Parameter(
                    torch.empty(self.GATES * hidden_size, in_size, **kw)))
                self.register_parameter("bias_ih" + sfx, nn.Parameter(
                    torch.empty(self.GATES * hidden_size, **kw)) if bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter, like torch.nn.GRU."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False), ("log_space", False),
                              ("backend", "auto")):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    # -- the pointwise part: u is the logit of the mixing weight, k_h the candidate's input --------

    def _mix(self, parts: list[Tensor]) -> Tensor:
        """u, the logit of the mixing weight, from the projected gate inputs (all but the last
        of ``parts``): h_t = sigmoid(-u) h_{t-1} + sigmoid(u) g(k_h), k_h = parts[-1]."""
        raise NotImplementedError

    def _coefficients(self, parts: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(a, b) of h_t = a_t h_{t-1} + b_t; ``sigmoid(-u)`` is ``1 - sigmoid(u)`` without cancellation."""
        return _Coefficients.apply(self._mix(parts), parts[-1])

    def _log_coefficients(self, parts: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(log a, log b), the paper's log-space form: -softplus(u), -softplus(-u) + log_g(k_h)."""
        u = self._mix(parts)
        return F.logsigmoid(-u), F.logsigmoid(u) + log_g(parts[-1])

    def _project(self, x: Tensor, layer: int, d: int) -> list[Tensor]:
        """One GEMM per gate block (each result contiguous, as the scan wants): GATES x [..., H]."""
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        w, b = getattr(self, "weight_ih" + sfx), getattr(self, "bias_ih" + sfx)
        H = self.hidden_size
        return [F.linear(x, w[i * H:(i + 1) * H], None if b is None else b[i * H:(i + 1) * H])
                for i in range(self.GATES)]

    # -- one layer and direction over the whole sequence ------------------------------------------

    def _scan(self, x: Tensor, layer: int, d: int, h0: Tensor | None, mask: Tensor | None,
              keep: Tensor | None = None) -> Tensor:
        """x [B, T, I], h0 [B, H] | None, mask [B, T, 1] 1/0 floats | None -> h [B, T, H] (unmasked).
        keep [B, T, 1] 1/0 floats | None: this direction's resets (0 = a_t = 0, the carried
        state dropped), already 1 on padding.

        Masks are applied by arithmetic, not ``torch.where``: a boolean select is several times
        slower on CPU, and ``a * 1 + 0`` is exact."""
        parts = self._project(x, layer, d)  # GATES x [B, T, H]: all steps at once
        reverse = d == 1
        if not self.log_space:
            a, bb = self._coefficients(parts)
            if keep is not None:  # a reset: a_t = 0
                a = a * keep
            if mask is not None:  # past the end: a = 1, b = 0 keeps the state
                a, bb = a * mask + (1 - mask), bb * mask
            return linear_scan(a, bb, h0, reverse=reverse, backend=self.backend)
        log_a, log_b = self._log_coefficients(parts)
        if keep is not None:  # a reset: log a_t = log 0 = -inf (never on padding: no -inf * 0)
            log_a = log_a + keep.log()
        if mask is not None:  # log a = 0, log b = log 0 = -inf
            log_a, log_b = log_a * mask, log_b + mask.log()
        h = log_linear_scan(log_a, log_b, None, reverse=reverse, backend=self.backend).exp()
        if h0 is not None:
            # h0 of any sign: its share is prod(a) * h0, the scan above started from zero
            decay = (log_a.flip(1).cumsum(1).flip(1) if reverse else log_a.cumsum(1)).exp()
            h = h + decay * h0.unsqueeze(1)
        return h

    def _fused(self, x: Tensor) -> bool:
        """Whether this layer runs the fused C++ pass: gates and scan in one pass forward and one
        back (csrc/cpu/minrnn_scan.cpp), for linear space on the cpu scan backend."""
        if self.log_space or x.dtype not in (torch.float32, torch.float64):
            return False
        if x.device.type != "cpu":
            return False
        mod = resolve_scan(self.backend, x.device)
        return getattr(mod, "minrnn_available", lambda: False)()

    def _scan_fused(self, x: Tensor, layer: int, d: int, h0: Tensor | None,
                    lengths: Tensor | None, time_major: bool,
                    reset: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x [T, B, I] (time_major) or [B, T, I] -> (h in the same layout, unmasked; h_n [B, H]).

        One GEMM for all gate blocks ([k_z | k_h] or [k_f | k_i | k_h] per row, what the kernel reads), without its
        bias: the kernel adds it (addmm would first copy the bias into every output row). h_n
        comes from the kernel too, so its gradient enters the backward pass as a [B, H] tensor,
        not as a zero-filled [T, B, H] one added to h's."""
        from ..scan.cpu import minrnn_scan

        sfx = f"_l{layer}" + ("_reverse" if d else "")
        # the cpu backend's GEMM (rows_linear: its micro-kernel, rows reduced in a fixed order):
        # torch's mm took 74 of MinGRU's ~90 ms fwd+bwd at T=4096, B=32, H=64 on an AMD Zen 5
        p = _cpu_linear(x, getattr(self, "weight_ih" + sfx))
        return minrnn_scan(p, getattr(self, "bias_ih" + sfx), h0, lengths, reverse=d == 1,
                           time_major=time_major, cell=self.GATES - 2, reset=reset)

    # -- the public API ---------------------------------------------------------------------------

    def forward(self, input: Tensor | PackedSequence, h0: Tensor | None = None,
                lengths: Tensor | None = None, *, reset: Tensor | None = None):
        """Run the stack over a whole sequence, in parallel over time.

        Args:
            input: ``[T, B, input_size]`` (``[B, T, input_size]`` with ``batch_first``),
                ``[T, input_size]`` unbatched, or a ``PackedSequence``.
            h0: ``[num_layers * num_directions, B, hidden_size]`` initial states (zeros if None).
            lengths: ``[B]`` integer lengths of padded sequences (not with a PackedSequence):
                steps ``t >= lengths[b]`` leave the state unchanged and output zeros; the reverse
                direction runs ``t = lengths[b]-1 .. 0``.
            reset: keyword only, ``[T, B]`` (``[B, T]`` with ``batch_first``, ``[T]`` unbatched),
                bool or 0/1: where true, ``a_t = 0`` in the scan: the state carried into step
                ``t`` of row ``b`` (``h0`` at ``t = 0``) is dropped, and no gradient crosses it.
                Every layer resets at the same steps; the reverse direction drops the state it
                carries from ``t`` to ``t - 1``, so each segment runs as its own sequence (as
                the RNN layers' ``reset``). Ignored on padding (``t >= lengths[b]``); not with a
                PackedSequence.

        Returns:
            ``(output, h_n)``: output ``[T, B, num_directions * hidden_size]`` (batch first if set,
            or a PackedSequence like the input), h_n ``[num_layers * num_directions, B, hidden_size]``,
            the state after each sequence's last step.
        """
        packed = isinstance(input, PackedSequence)
        unbatched = False
        if packed:
            if reset is not None:
                raise ValueError(
                    f"{type(self).__name__}: reset= is not supported with a PackedSequence input; "
                    "pass the padded input [T, B, *] (or [B, T, *] with batch_first) with "
                    "lengths= and reset of shape [T, B] ([B, T]) instead")
            if lengths is not None:
                raise ValueError("lengths must be None when input is a PackedSequence, "
                                 "which carries its own lengths")
            x, lengths = pad_packed_sequence(input, batch_first=True)  # [B, T, I], original order
            tm = False
        else:
            if not isinstance(input, Tensor) or input.dim() not in (2, 3):
                raise ValueError("input must be a 3-D (batched) or 2-D (unbatched) tensor, got "
                                 f"{tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__}")
            unbatched = input.dim() == 2
            # the fused path keeps [T, B, I] as it comes: no transposed copies in or out
            tm = not unbatched and not self.batch_first and self._fused(input)
            x = input.unsqueeze(0) if unbatched else (input if self.batch_first or tm
                                                      else input.transpose(0, 1))
            x = x.contiguous()  # [B, T, I] ([T, B, I] if tm): one copy here, not one per GEMM
            if unbatched and h0 is not None:
                h0 = h0.unsqueeze(1)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input.size(-1) must be equal to input_size. Expected "
                             f"{self.input_size}, got {x.shape[-1]}")
        B, T = (x.shape[1], x.shape[0]) if tm else (x.shape[0], x.shape[1])
        fused = self._fused(x)
        dirs = 2 if self.bidirectional else 1
        if h0 is not None:
            expected = (self.num_layers * dirs, B, self.hidden_size)
            if tuple(h0.shape) != expected:
                raise ValueError(f"Expected hidden size {expected}, got {list(h0.shape)}")
            if h0.dtype != x.dtype:
                raise ValueError(f"h0 must have dtype {x.dtype} like input, got {h0.dtype}")
        mask = self._mask(lengths, B, T, x.device)
        flags = None if reset is None else _reset_flags(reset, B, T, self.batch_first, unbatched,
                                                        mask, x.device)
        lengths64 = None if mask is None or not fused else torch.as_tensor(lengths).to("cpu", torch.int64)
        mask = None if mask is None else mask.to(x.dtype)  # [B, T, 1] 1.0 / 0.0
        if tm and mask is not None:
            mask = mask.transpose(0, 1)  # [T, B, 1]
        h_n = []
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                h0_ld = None if h0 is None else h0[layer * dirs + d]
                if fused:
                    r = None if flags is None else (flags[d].t() if tm else flags[d]).contiguous()
                    h, last = self._scan_fused(x, layer, d, h0_ld, lengths64, tm, r)
                    h_n.append(last)
                else:
                    keep = None if flags is None else (~flags[d]).to(x.dtype).unsqueeze(-1)
                    h = self._scan(x, layer, d, h0_ld, mask, keep)
                    # padded steps kept the state, so the last processed column is the final state
                    if T > 0:
                        h_n.append(h[:, 0] if d else h[:, T - 1])
                outs.append(h)
            y = outs[0] if dirs == 1 else torch.cat(outs, dim=-1)  # [B, T, dirs*H] ([T, B, ..] if tm)
            if mask is not None:
                y = y * mask
            if self.dropout and self.training and layer < self.num_layers - 1:
                y = F.dropout(y, self.dropout, training=True)
            x = y
        h_n = torch.stack(h_n, 0) if T > 0 else self._empty_state(h0, B, x)
        if packed:
            return self._repack(x, lengths, input), h_n
        if unbatched:
            return x.squeeze(0), h_n.squeeze(1)
        return (x if self.batch_first or tm else x.transpose(0, 1)), h_n

    def _empty_state(self, h0, B, x):
        dirs = 2 if self.bidirectional else 1
        return h0 if h0 is not None else x.new_zeros(self.num_layers * dirs, B, self.hidden_size)

    @staticmethod
    def _mask(lengths, B: int, T: int, device) -> Tensor | None:
        if lengths is None:
            return None
        if not isinstance(lengths, Tensor):
            lengths = torch.as_tensor(lengths)
        if lengths.dim() != 1 or lengths.shape[0] != B or lengths.dtype.is_floating_point:
            raise ValueError(f"lengths must be an integer tensor of shape ({B},), got "
                             f"{lengths.dtype} {tuple(lengths.shape)}")
        if B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
            raise ValueError(f"lengths must lie in [0, {T}] (T = input's time steps), got "
                             f"min {int(lengths.min())}, max {int(lengths.max())}")
        steps = torch.arange(T, device=device)
        return (steps[None, :] < lengths.to(device)[:, None]).unsqueeze(-1)  # [B, T, 1] bool

    @staticmethod
    def _repack(y: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
        """y [B, T, F] in the original batch order -> a PackedSequence with like's ordering."""
        order = like.sorted_indices
        if order is not None:
            y, lengths = y.index_select(0, order), lengths[order.cpu()]
        p = pack_padded_sequence(y, lengths.cpu(), batch_first=True, enforce_sorted=True)
        return PackedSequence(p.data, p.batch_sizes, like.sorted_indices, like.unsorted_indices)

    def step(self, x_t: Tensor, h: Tensor | None = None, *,
             reset: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One time step, for streaming inference: ``h_t = a_t * h_{t-1} + b_t`` per layer.

        Calling ``step`` T times gives the outputs and final state of ``forward`` on the whole
        sequence (up to rounding). Only for unidirectional stacks: the reverse direction needs
        the future.

        Args:
            x_t: ``[B, input_size]`` (or ``[input_size]`` unbatched), the input at one step.
            h: ``[num_layers, B, hidden_size]`` states after the previous step, None for zeros.
            reset: keyword only, ``[B]`` bool or 0/1 (a scalar unbatched): where true, ``h`` of
                that row is dropped (zeros) before the step, as ``forward``'s ``reset`` at one step.

        Returns:
            ``(y_t, h)``: y_t ``[B, hidden_size]`` the last layer's state, h ``[num_layers, B,
            hidden_size]`` the new states.
        """
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional layer (bidirectional=False): the "
                             "reverse direction reads future inputs")
        unbatched = x_t.dim() == 1
        if unbatched:
            x_t = x_t.unsqueeze(0)
            h = None if h is None else h.unsqueeze(1)
        if x_t.dim() != 2 or x_t.shape[-1] != self.input_size:
            raise ValueError(f"x_t must have shape [B, {self.input_size}], got {tuple(x_t.shape)}")
        B = x_t.shape[0]
        if h is None:
            h = x_t.new_zeros(self.num_layers, B, self.hidden_size)
        elif tuple(h.shape) != (self.num_layers, B, self.hidden_size):
            raise ValueError(f"h must have shape {(self.num_layers, B, self.hidden_size)}, "
                             f"got {tuple(h.shape)}")
        if reset is not None:
            r = _check_reset(reset, (B,) if not unbatched else (), "[B]" if not unbatched else
                             "[] (unbatched)", x_t.device).reshape(1, B, 1)
            h = h * (~r).to(h.dtype)
        new, inp = [], x_t
        for layer in range(self.num_layers):
            a, bb = self._coefficients(self._project(inp, layer, 0))
            inp = a * h[layer] + bb
            new.append(inp)
            if self.dropout and self.training and layer < self.num_layers - 1:
                inp = F.dropout(inp, self.dropout, training=True)
        h = torch.stack(new, 0)
        return (new[-1].squeeze(0), h.squeeze(1)) if unbatched else (new[-1], h)


def _reset_flags(reset, B: int, T: int, batch_first: bool, unbatched: bool,
                 live: Tensor | None, device) -> tuple[Tensor, Tensor]:
    """``forward``'s ``reset`` -> the bool [B, T] flags "a_t = 0" of the forward and the reverse
    direction. Forward: the flag itself. Reverse: the state passes from t + 1 down to t, so a
    reset at t + 1 (a segment starting there) drops it at t; the first reversed step starts from
    h0, never reset. Padding (``live`` false, [B, T, 1]) never resets: it is the identity."""
    if unbatched:
        r = _check_reset(reset, (T,), "[T] (unbatched input)", device).unsqueeze(0)
    elif batch_first:
        r = _check_reset(reset, (B, T), "[B, T] (batch_first)", device)
    else:
        r = _check_reset(reset, (T, B), "[T, B]", device).t()
    if live is not None:
        r = r & live.squeeze(-1)
    rev = torch.zeros_like(r)
    rev[:, :-1] = r[:, 1:]
    return r, rev


class MinGRU(_MinRNNBase):
    r"""A multi-layer minGRU (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201).

    Per layer and direction, with :math:`g(x) = x + 0.5` for :math:`x \ge 0` and
    :math:`\sigma(x)` otherwise (positive, so the log-space form exists):

    .. math::
        z_t = \sigma(W_z x_t + b_z), \quad \tilde h_t = g(W_h x_t + b_h), \quad
        h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

    The gates do not read :math:`h_{t-1}`, so the whole sequence is one ``fusedrnn.linear_scan``
    with :math:`a_t = 1 - z_t`, :math:`b_t = z_t \tilde h_t` after one GEMM for all steps.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as in
            ``torch.nn.GRU`` (the layout is ``[T, B, *]``, ``[B, T, *]`` with ``batch_first``).
        log_space: run the paper's log-space form (``log_linear_scan`` on ``-softplus(-k)``,
            ``-softplus(k)`` and ``log_g``) instead of the linear-space scan. Both compute the
            same function; our scan kernels never divide by products of ``a``, so the linear form
            is stable and faster (see docs/scan.md), and is the default.
        backend: scan backend, ``"auto"`` | ``"reference"`` | ``"cpu"`` | ``"triton"``.

    Parameters: ``weight_ih_l{k}[_reverse]`` ``[2*hidden_size, in]`` (rows ``[z; h]``) and
    ``bias_ih_l{k}[_reverse]`` ``[2*hidden_size]``.

    Example::

        >>> rnn = fusedrnn.MinGRU(10, 20, num_layers=2)
        >>> y, h_n = rnn(torch.randn(5, 3, 10))           # y [5, 3, 20], h_n [2, 3, 20]
        >>> y_t, h = rnn.step(torch.randn(3, 10))          # streaming, one step at a time
    """

    GATES = 2

    def _mix(self, parts):
        return parts[0]  # k_z


class MinLSTM(_MinRNNBase):
    r"""A multi-layer minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201).

    Per layer and direction, with the same :math:`g` as ``MinGRU`` and normalised gates so the
    state stays time-independent in scale:

    .. math::
        f_t = \sigma(W_f x_t + b_f), \quad i_t = \sigma(W_i x_t + b_i), \quad
        \tilde h_t = g(W_h x_t + b_h), \\
        f'_t = \frac{f_t}{f_t + i_t}, \quad i'_t = \frac{i_t}{f_t + i_t}, \quad
        h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t

    Computed as :math:`f'_t = \sigma(-u)`, :math:`i'_t = \sigma(u)` with
    :math:`u = \log i_t - \log f_t = \mathrm{softplus}(-k_f) - \mathrm{softplus}(-k_i)` (the
    paper's ``diff``), which never divides. Arguments as ``MinGRU``; parameters
    ``weight_ih_l{k}[_reverse]`` ``[3*hidden_size, in]`` (rows ``[f; i; h]``).

    Example::

        >>> rnn = fusedrnn.MinLSTM(10, 20, batch_first=True, bidirectional=True)
        >>> y, h_n = rnn(torch.randn(3, 5, 10))           # y [3, 5, 40], h_n [2, 3, 20]
    """

    GATES = 3

    def _mix(self, parts):
        k_f, k_i = parts[0], parts[1]
        return F.softplus(-k_f) - F.softplus(-k_i)
