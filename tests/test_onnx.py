"""``torch.onnx.export`` (torch's default, dynamo-based exporter) of models with fusedrnn layers
and cells: standard ONNX RNN / LSTM / GRU nodes that onnxruntime runs with eager's outputs."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from conftest import TOL

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


class Wrap(torch.nn.Module):
    """A layer or cell with every output flattened, hx passed when given."""

    def __init__(self, mod):
        super().__init__()
        self.mod = mod

    def forward(self, x, *hx):
        if hx:
            out = self.mod(x, hx[0] if len(hx) == 1 else tuple(hx))
        else:
            out = self.mod(x)
        flat = []
        for o in out if isinstance(out, tuple) else (out,):
            flat.extend(o if isinstance(o, tuple) else (o,))
        return tuple(flat)


def _export(model, args, **kw):
    # torch's default exporter (dynamo=True since torch 2.9), as a user calls it
    return torch.onnx.export(model.eval(), args, verbose=False, **kw)


def _run_ort(prog, args):
    sess = ort.InferenceSession(prog.model_proto.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return [torch.from_numpy(o) for o in sess.run(None, {n: a.numpy() for n, a in zip(names, args)})]


def _check(prog, model, args):
    with torch.no_grad():
        want = model(*args)
    got = _run_ort(prog, args)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL[torch.float32])


def _rnn_nodes(prog):
    return [n for n in prog.model_proto.graph.node if n.op_type in ("RNN", "LSTM", "GRU")]


CASES = {
    "LSTM-2l-bi-bf-hx": (fusedrnn.LSTM, dict(num_layers=2, bidirectional=True, batch_first=True), True),
    "LSTM-nobias": (fusedrnn.LSTM, dict(bias=False), False),
    "GRU-2l-bi-bf-hx": (fusedrnn.GRU, dict(num_layers=2, bidirectional=True, batch_first=True), True),
    "GRU": (fusedrnn.GRU, {}, False),
    "RNN-tanh-2l-hx": (fusedrnn.RNN, dict(num_layers=2), True),
    "RNN-relu-bi": (fusedrnn.RNN, dict(nonlinearity="relu", bidirectional=True), False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_layer_to_onnxruntime(name):
    cls, kw, with_hx = CASES[name]
    torch.manual_seed(0)
    layer = cls(5, 7, **kw)
    L = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    x = torch.randn(3, 4, 5)  # [B, T, I] with batch_first, else [T, B, I]: both valid
    args = (x,)
    if with_hx:
        n = 2 if cls is fusedrnn.LSTM else 1
        args += tuple(torch.randn(L, 3 if kw.get("batch_first") else 4, 7) for _ in range(n))
    model = Wrap(layer)
    prog = _export(model, args)
    nodes = _rnn_nodes(prog)
    assert [n.op_type for n in nodes] == [cls.__name__] * kw.get("num_layers", 1)
    assert all(n.domain == "" for n in prog.model_proto.graph.node), "only standard ONNX ops"
    if cls is fusedrnn.GRU:
        attrs = {a.name: a for a in nodes[0].attribute}
        assert attrs["linear_before_reset"].i == 1
    _check(prog, model, args)


def test_dynamic_batch_and_sequence():
    torch.manual_seed(0)
    model = Wrap(fusedrnn.GRU(5, 7, bidirectional=True, batch_first=True))
    T, B = torch.export.Dim("T", min=2, max=64), torch.export.Dim("B", min=2, max=64)
    prog = _export(model, (torch.randn(3, 4, 5),), dynamic_shapes=({0: B, 1: T},))
    for shape in ((5, 9, 5), (2, 2, 5)):
        _check(prog, model, (torch.randn(*shape),))


@pytest.mark.parametrize("cls", [fusedrnn.LSTMCell, fusedrnn.GRUCell, fusedrnn.RNNCell],
                         ids=lambda c: c.__name__)
def test_cell_to_onnxruntime(cls):
    torch.manual_seed(0)
    model = Wrap(cls(5, 7))
    hx = tuple(torch.randn(3, 7) for _ in range(2 if cls is fusedrnn.LSTMCell else 1))
    args = (torch.randn(3, 5), *hx)
    prog = _export(model, args)
    assert len(_rnn_nodes(prog)) == 1
    _check(prog, model, args)


def test_proj_size_is_a_clear_error():
    model = Wrap(fusedrnn.LSTM(5, 7, proj_size=3))
    with pytest.raises(Exception, match="proj_size") as info:
        _export(model, (torch.randn(4, 3, 5),))
    assert "ONNX LSTM operator has no output projection" in str(info.value) + str(
        info.value.__cause__)


class _Packed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = fusedrnn.GRU(5, 7)

    def forward(self, x, lengths):
        return self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))[1]


def test_packed_input_is_a_clear_error():
    with pytest.raises(Exception, match="PackedSequence input cannot be exported") as info:
        try:
            _export(_Packed(), (torch.randn(4, 3, 5), torch.tensor([4, 2, 3])))
        except Exception as e:  # the exporter wraps the layer's error: surface its cause
            raise e.__cause__ or e
    assert isinstance(info.value, NotImplementedError)
