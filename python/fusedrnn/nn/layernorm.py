"""LayerNorm LSTM and GRU (Ba et al. 2016, as Haste implements them): layers and cells.

    LSTM: gates = LN(x W_ih^T) * ln_ih_weight + LN(h W_hh^T) * ln_hh_weight + b_ih + b_hh
          c' = sigmoid(f) c + sigmoid(i) tanh(g)
          h' = sigmoid(o) tanh(LN(c') * ln_c_weight + ln_c_bias)
    GRU:  gx = LN(x W_ih^T) * ln_ih_weight + b_ih; gh = LN(h W_hh^T) * ln_hh_weight + b_hh;
          r, z, n as torch.nn's GRU on gx and gh

LN normalises over the whole last dimension (G*H; H for c'), biased variance, eps 1e-5, gain
only (no LN bias) except ln_c_bias. The layers are torch.nn's LSTM/GRU (and our layers on the
recurrence op: stacking, directions, dropout, packing, hx, unbatched input, torch.nn's checks)
plus the LN parameters per layer and direction; the input-side LN runs outside the time loop,
over all steps at once, the recurrent one inside it (op modes ``LN_LSTM`` / ``LN_GRU``, their
parameters passed as the op's ``cell_params``: ``fusedrnn.ops.cells.CELLS[mode].cell_params``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import backends
from ..ops.cells import CELLS, layer_norm
from . import _amp, _onnx
from .cells import GRUCell, LSTMCell
from .rnn import GRU, LSTM, _project


def _ln_param_specs(op_mode: str) -> tuple[tuple[str, int], ...]:
    """(name, size in units of H) of the LN parameters of one layer/direction, in order: the
    input side's gain, then the op's ``cell_params``."""
    cell = CELLS[op_mode]
    return (("ln_ih_weight", cell.gates), *cell.cell_params)


def _ln_input(xw_raw: Tensor, ln_ih: Tensor, b_ih, b_hh, fold: bool):
    """(xw, the op's b_hh): LN(x W_ih^T) * ln_ih_weight + b_ih, with b_hh folded in where it sits
    outside every gate product (fold: the LSTM; GRU keeps b_hn inside r * (...))."""
    if fold and b_ih is not None:
        return layer_norm(xw_raw, ln_ih, b_ih + b_hh), None
    return layer_norm(xw_raw, ln_ih, b_ih), b_hh


def _no_export(obj) -> None:
    if _onnx.exporting():
        raise NotImplementedError(
            f"{type(obj).__name__} has no standard ONNX node: torch.onnx.export of the "
            "LayerNorm cells is not supported"
        )


class _LayerNormParams:
    """Registers, initialises (gains 1, biases 0) and reads the LN parameters."""

    _OP_MODE: str

    def _ln_register(self, suffixes, device, dtype) -> None:
        H = self.hidden_size
        for sfx in suffixes:
            for name, k in _ln_param_specs(self._OP_MODE):
                init = torch.zeros if name.endswith("bias") else torch.ones
                self.register_parameter(
                    name + sfx, nn.Parameter(init(k * H, device=device, dtype=dtype)))

    def _ln_reset(self) -> None:
        with torch.no_grad():
            for name, p in self.named_parameters(recurse=False):
                if name.startswith("ln_"):
                    p.fill_(0.0 if "_bias" in name else 1.0)

    def _ln_values(self, sfx: str, dtype):
        """(ln_ih_weight, [cell_params]) of one layer/direction, cast to dtype when given."""
        vals = [getattr(self, name + sfx) for name, _ in _ln_param_specs(self._OP_MODE)]
        if dtype is not None:
            vals = [_amp.cast(v, dtype) for v in vals]
        return vals[0], vals[1:]


class _LayerNormRNNMixin(_LayerNormParams):
    """The LN layers: torch.nn's LSTM/GRU construction plus LN parameters; the forward is our
    layers' own, with the LN input side and the op's LN mode."""

    def __init__(self, *args, backend: str = "auto", recurrent_grad_clip=None, **kwargs):
        super().__init__(*args, backend=backend, recurrent_grad_clip=recurrent_grad_clip,
                         **kwargs)
        if getattr(self, "proj_size", 0):
            raise ValueError(f"{type(self).__name__} does not support proj_size (got "
                             f"{self.proj_size}); use proj_size=0")
        dirs = ("", "_reverse") if self.bidirectional else ("",)
        w = self.weight_ih_l0
        self._ln_register([f"_l{k}{d}" for k in range(self.num_layers) for d in dirs],
                          w.device, w.dtype)
        # torch.nn's order per layer and direction, the LN parameters after its own
        order = [n for k in range(self.num_layers) for d in dirs for n in
                 [*(f"{p}_l{k}{d}" for p in self._flat_weights_names_of(k, d)),
                  *(f"{p}_l{k}{d}" for p, _ in _ln_param_specs(self._OP_MODE))]]
        self._parameters = {n: self._parameters[n] for n in order}

    def _flat_weights_names_of(self, layer: int, d: str):
        return [n[: -len(f"_l{layer}{d}")] for n in self._flat_weights_names
                if n.endswith(f"_l{layer}{d}")]

    def reset_parameters(self) -> None:
        super().reset_parameters()  # torch.nn's uniform init of its own weights (and ours)
        self._ln_reset()

    def _input_side(self, x, w_ih, b_ih, b_hh, live, lin, layer, direction, dtype):
        ln_ih, cell_params = self._ln_values(f"_l{layer}" + ("_reverse" if direction else ""),
                                             dtype)
        xw, b_op = _ln_input(_project(x, w_ih, None, live, lin), ln_ih, b_ih, b_hh,
                             fold=self.mode != "GRU")
        return xw, b_op, {"cell_params": cell_params}

    def _run(self, x, h0, c0, lengths, reset=None):
        _no_export(self)
        return super()._run(x, h0, c0, lengths, reset)


class LayerNormLSTM(_LayerNormRNNMixin, LSTM):
    r"""LayerNorm LSTM layer (Ba et al. 2016, Haste's LayerNormLSTM equations).

    gates = LN(x W_ih^T) ln_ih_weight + LN(h W_hh^T) ln_hh_weight + b_ih + b_hh, gates
    (i, f, g, o); c_t = f * c_{t-1} + i * g; h_t = o * tanh(LN(c_t) ln_c_weight + ln_c_bias).

    Args:
        input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
        bidirectional=False, device=None, dtype=None: as :class:`torch.nn.LSTM` (no
            ``proj_size``).
        backend: "auto" | "reference" | "cpu" (keyword only; "triton" and "cuda" do not
            implement it and say so).
        recurrent_grad_clip, zoneout, weight_drop, dropout_mode: as :class:`fusedrnn.LSTM`
            (keyword only).

    Parameters per layer k (``_reverse`` for the backward direction): torch.nn's
    ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, and
    ``ln_ih_weight_l{k}`` [4H], ``ln_hh_weight_l{k}`` [4H], ``ln_c_weight_l{k}`` [H],
    ``ln_c_bias_l{k}`` [H] (initialised to 1, 1, 1, 0).

    Inputs and outputs as :class:`torch.nn.LSTM`; ``forward(input, hx=None, *, reset=None)``
    resets the carried state per step as :class:`fusedrnn.LSTM` does.

    Example::

        >>> lstm = fusedrnn.LayerNormLSTM(10, 20, num_layers=2)
        >>> out, (h_n, c_n) = lstm(torch.randn(5, 3, 10))
    """

    _OP_MODE = "LN_LSTM"


class LayerNormGRU(_LayerNormRNNMixin, GRU):
    r"""LayerNorm GRU layer (Haste's LayerNormGRU equations).

    gx = LN(x W_ih^T) ln_ih_weight + b_ih; gh = LN(h W_hh^T) ln_hh_weight + b_hh;
    r = sigmoid(gx_r + gh_r); z = sigmoid(gx_z + gh_z); n = tanh(gx_n + r * gh_n);
    h_t = (1 - z) * n + z * h_{t-1}.

    Args: as :class:`torch.nn.GRU`, plus ``backend``, ``recurrent_grad_clip``, ``zoneout``,
    ``weight_drop``, ``dropout_mode`` as :class:`LayerNormLSTM`; ``forward`` takes ``reset=``.
    Extra parameters per layer and direction: ``ln_ih_weight_l{k}`` [3H], ``ln_hh_weight_l{k}``
    [3H] (initialised to 1).

    Example::

        >>> gru = fusedrnn.LayerNormGRU(10, 20, bidirectional=True)
        >>> out, h_n = gru(torch.randn(5, 3, 10))
    """

    _OP_MODE = "LN_GRU"


class _LayerNormCellMixin(_LayerNormParams):
    """The LN cells: torch.nn's cell plus the LN parameters; a length-1 call of the op."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, backend=backend, **kwargs)
        self._ln_register([""], self.weight_ih.device, self.weight_ih.dtype)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if "ln_ih_weight" in self._parameters:  # not yet registered inside torch.nn's __init__
            self._ln_reset()

    def _step(self, x, states):
        _no_export(self)
        return super()._step(x, states)

    def _run_step(self, mode, x, h0, c0, dtype, ws=None):
        w_ih, b_ih, w_hh, b_hh = ws = self._weights() if ws is None else ws
        if dtype is not None:
            w_ih, b_ih, w_hh, b_hh = (_amp.cast(t, dtype) for t in ws)
        ln_ih, cell_params = self._ln_values("", dtype)
        xw, b_op = _ln_input(F.linear(x, w_ih).unsqueeze(0), ln_ih, b_ih, b_hh,
                             fold=not isinstance(self, nn.GRUCell))
        _, h, c = backends.recurrence(mode, xw, w_hh, b_op, h0, c0, backend=self.backend,
                                      cell_params=cell_params)
        return h, c


class LayerNormLSTMCell(_LayerNormCellMixin, LSTMCell):
    r"""One step of :class:`LayerNormLSTM` with the :class:`torch.nn.LSTMCell` interface.

    Parameters ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``, ``ln_ih_weight`` [4H],
    ``ln_hh_weight`` [4H], ``ln_c_weight`` [H], ``ln_c_bias`` [H]. Inputs ``input`` [B, I] or
    [I], ``hx`` = (h, c) or None; returns (h', c').

    Example::

        >>> cell = fusedrnn.LayerNormLSTMCell(10, 20)
        >>> h, c = cell(torch.randn(3, 10))
    """

    _MODE = "LN_LSTM"
    _OP_MODE = "LN_LSTM"


class LayerNormGRUCell(_LayerNormCellMixin, GRUCell):
    r"""One step of :class:`LayerNormGRU` with the :class:`torch.nn.GRUCell` interface.

    Parameters ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``, ``ln_ih_weight`` [3H],
    ``ln_hh_weight`` [3H]. Inputs ``input`` [B, I] or [I], ``hx`` [B, H] or [H] or None.

    Example::

        >>> cell = fusedrnn.LayerNormGRUCell(10, 20)
        >>> h = cell(torch.randn(3, 10))
    """

    _MODE = "LN_GRU"
    _OP_MODE = "LN_GRU"


# Haste's gate order is (i, g, f, o); torch.nn's is (i, f, g, o): block k of ours is block
# _HASTE_GATES[k] of Haste's.
_HASTE_GATES = (0, 2, 1, 3)


def from_haste_layer_norm_lstm(state_dict: dict) -> dict:
    """A ``haste_pytorch.LayerNormLSTM`` state_dict as a 1-layer :class:`LayerNormLSTM`'s.

    Haste keeps ``kernel`` [I, 4H] and ``recurrent_kernel`` [H, 4H] (x @ kernel, gates
    (i, g, f, o)), one ``bias`` [4H], ``gamma`` [2, 4H] (the LN gains of x @ kernel and
    h @ recurrent_kernel) and ``gamma_h``, ``beta_h`` [H] (the cell state's LN). The gates are
    reordered to torch.nn's (i, f, g, o) with the gains that go with them (the LN over the whole
    4H row does not depend on the order); Haste's single bias becomes ``bias_ih_l0`` and
    ``bias_hh_l0`` is zero. Haste's zoneout and recurrent dropout have no counterpart here.

    Example::

        >>> lstm = fusedrnn.LayerNormLSTM(I, H)
        >>> lstm.load_state_dict(from_haste_layer_norm_lstm(haste_lstm.state_dict()))
    """
    H = state_dict["recurrent_kernel"].shape[0]

    def order(t):  # [..., 4H] in Haste's gate order -> torch.nn's, along the last dim
        return torch.cat([t[..., k * H:(k + 1) * H] for k in _HASTE_GATES], -1)

    bias = order(state_dict["bias"])
    gamma = state_dict["gamma"]
    return {
        "weight_ih_l0": order(state_dict["kernel"]).t().contiguous(),
        "weight_hh_l0": order(state_dict["recurrent_kernel"]).t().contiguous(),
        "bias_ih_l0": bias,
        "bias_hh_l0": torch.zeros_like(bias),
        "ln_ih_weight_l0": order(gamma[0]),
        "ln_hh_weight_l0": order(gamma[1]),
        "ln_c_weight_l0": state_dict["gamma_h"].clone(),
        "ln_c_bias_l0": state_dict["beta_h"].clone(),
    }
