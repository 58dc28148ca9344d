"""The layers and cells as standard ONNX ``RNN`` / ``LSTM`` / ``GRU`` nodes.

``torch.onnx.export`` (the dynamo exporter, torch's default) traces the model with
``torch.onnx.is_in_onnx_export()`` true. The fused custom ops have no ONNX translation, and a
deployer expects the standard recurrent nodes anyway, so while exporting the layers take this
path instead: one node per layer (both directions in one node, ``direction="bidirectional"``),
emitted with ``torch.onnx.ops.symbolic_multi_out``, with torch.nn's weights reordered to ONNX's
gate order. Plain torch ops around the nodes (transposes, dropout between layers) export as usual.

Gate orders: torch.nn LSTM (i, f, g, o) -> ONNX (i, o, f, c); torch.nn GRU (r, z, n) -> ONNX
(z, r, h) with ``linear_before_reset=1`` (torch.nn's GRU applies r after W_hn h + b_hn).
"""

from __future__ import annotations

import torch
from torch import Tensor

_OP = {"RNN_TANH": "RNN", "RNN_RELU": "RNN", "LSTM": "LSTM", "GRU": "GRU"}
#: torch.nn's gate chunks, listed in ONNX's order
_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}


try:  # the flag behind torch.onnx.is_in_onnx_export() for the dynamo exporter: a module
    # global that torch.compile can read (the TorchScript exporter's flag is a property
    # torch.compile refuses to trace), without the public call's per-call imports
    from torch.onnx._internal.exporter import _flags

    def exporting() -> bool:
        """True while ``torch.onnx.export`` (dynamo=True, the default) traces the model."""
        return _flags._is_onnx_exporting
except ImportError:  # another torch layout: the public (slower) call
    def exporting() -> bool:
        """True while ``torch.onnx.export`` traces the model."""
        return torch.onnx.is_in_onnx_export()


def _reorder(mode: str, t: Tensor | None) -> Tensor | None:
    if t is None or mode not in _ORDER:
        return t
    chunks = t.chunk(len(_ORDER[mode]), 0)
    return torch.cat([chunks[i] for i in _ORDER[mode]], 0)


def _node(mode: str, x: Tensor, ws: list[tuple], h0: Tensor, c0: Tensor | None, hidden: int):
    """One ONNX node over D = len(ws) directions.

    x [T, B, I]; ws: per direction (w_ih, w_hh, b_ih, b_hh); h0, c0 [D, B, H].
    Returns Y [T, D, B, H], Y_h [D, B, H], Y_c [D, B, H] | None.
    """
    D = len(ws)
    W = torch.stack([_reorder(mode, w[0]) for w in ws])  # [D, G*H, I]
    R = torch.stack([_reorder(mode, w[1]) for w in ws])  # [D, G*H, H]
    B = None
    if ws[0][2] is not None:
        B = torch.stack([torch.cat([_reorder(mode, w[2]), _reorder(mode, w[3])]) for w in ws])
    attrs = {"hidden_size": hidden, "direction": "bidirectional" if D == 2 else "forward"}
    if mode.startswith("RNN"):
        attrs["activations"] = ["Tanh" if mode == "RNN_TANH" else "Relu"] * D
    if mode == "GRU":
        attrs["linear_before_reset"] = 1
    T, Bn = x.shape[0], x.shape[1]
    # None: no sequence_lens (see run_layers)
    inputs = [x, W, R, B, None, h0] + ([c0] if mode == "LSTM" else [])
    n_out = 3 if mode == "LSTM" else 2
    shapes = [[T, D, Bn, hidden]] + [[D, Bn, hidden]] * (n_out - 1)
    outs = torch.onnx.ops.symbolic_multi_out(
        _OP[mode], inputs, attrs, dtypes=[x.dtype] * n_out, shapes=shapes, version=14,
    )
    return outs[0], outs[1], (outs[2] if mode == "LSTM" else None)


def run_layers(layer, x: Tensor, h0: Tensor, c0: Tensor | None):
    """The layer stack of ``_FusedRNNMixin._run`` as ONNX nodes, without lengths: they come only
    from a PackedSequence, which the layer's forward refuses to export (its ``batch_sizes`` are
    data the exported graph's shapes would depend on; torch.nn's layers fail there too)."""
    import torch.nn.functional as F

    if getattr(layer, "proj_size", 0) > 0:
        raise NotImplementedError(
            "ONNX export of LSTM with proj_size > 0: the ONNX LSTM operator has no output "
            "projection; export a model without proj_size"
        )
    D = 2 if layer.bidirectional else 1
    h_n, c_n = [], []
    for i in range(layer.num_layers):
        ws = [layer._layer_params(i, d)[:4] for d in range(D)]
        sl = slice(i * D, (i + 1) * D)
        y, h, c = _node(layer.mode, x, ws, h0[sl], None if c0 is None else c0[sl],
                        layer.hidden_size)
        x = y.permute(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], D * layer.hidden_size)
        if layer.dropout > 0 and layer.training and i < layer.num_layers - 1:
            x = F.dropout(x, p=layer.dropout, training=True)
        h_n.append(h)
        c_n.append(c)
    return x, torch.cat(h_n, 0), (torch.cat(c_n, 0) if c0 is not None else None)


def cell_step(mode: str, cell, x: Tensor, h: Tensor, c: Tensor | None):
    """One cell step as a length-1 ONNX node: x [B, I], h, c [B, H] -> (h', c' | None)."""
    ws = [(cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
    _, h_n, c_n = _node(mode, x.unsqueeze(0), ws, h.unsqueeze(0),
                        None if c is None else c.unsqueeze(0), cell.hidden_size)
    return h_n[0], (None if c_n is None else c_n[0])
