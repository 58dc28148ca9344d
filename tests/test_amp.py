"""Autocast (CPU, for real) and float16 on CPU for the drop-in layers and cells.

Expected values: a float64 run of torch.nn on the same weights and input rounded to the dtype the
policy casts them to, so the only error left is fusedrnn's own (bf16/fp16 intermediates and the
output rounding), bounded by the dtype's tolerance (conftest.TOL). CUDA autocast takes the same
code path keyed on the input's device type (``fusedrnn.nn._amp``); without a GPU here only its
dtype choice is exercised (``test_policy_reads_the_inputs_device``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fusedrnn
from conftest import TOL
from fusedrnn.nn import _amp

LAYERS = {
    "LSTM": (fusedrnn.LSTM, torch.nn.LSTM, {}),
    "LSTM-proj": (fusedrnn.LSTM, torch.nn.LSTM, {"proj_size": 3}),
    "GRU": (fusedrnn.GRU, torch.nn.GRU, {}),
    "RNN-relu": (fusedrnn.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
}
CELLS = {
    "LSTMCell": (fusedrnn.LSTMCell, torch.nn.LSTMCell),
    "GRUCell": (fusedrnn.GRUCell, torch.nn.GRUCell),
    "RNNCell": (fusedrnn.RNNCell, torch.nn.RNNCell),
}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _states(out):
    """Every tensor a layer or cell returns, flattened."""
    if not isinstance(out, tuple):
        return [out]
    return [t for o in out for t in (o if isinstance(o, tuple) else (o,))]


def _reference(ours, torch_cls, kw, args, dtype):
    """float64 torch.nn on ours' weights and the inputs, each rounded to ``dtype`` first."""
    ref = torch_cls(*args, **kw).double()
    ref.load_state_dict({k: v.to(dtype).double() for k, v in ours.state_dict().items()})
    return ref


def _layer(cls, kw, backend):
    torch.manual_seed(0)
    return cls(5, 6, num_layers=2, bidirectional=True, batch_first=True, backend=backend, **kw)


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_autocast_bf16(name, backend):
    cls, torch_cls, kw = LAYERS[name]
    m = _layer(cls, kw, backend)
    x = torch.randn(3, 7, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    got = _states(out)
    assert all(t.dtype == torch.bfloat16 for t in got)
    ref = _reference(m, torch_cls, dict(num_layers=2, bidirectional=True, batch_first=True, **kw),
                     (5, 6), torch.bfloat16)
    want = _states(ref(x.bfloat16().double()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, **TOL[torch.bfloat16])


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_autocast_grads_in_param_dtype(name, backend):
    """Backward under autocast: parameter and input gradients in their own dtype (float32),
    near the float32 gradients (bf16 forward, so bf16 tolerance relative to their scale)."""
    cls, _, kw = LAYERS[name]
    m = _layer(cls, kw, backend)
    x = torch.randn(3, 7, 5, requires_grad=True)
    h0 = torch.randn(4, 3, 3 if kw.get("proj_size") else 6, requires_grad=True)
    hx = (h0, torch.randn(4, 3, 6)) if cls is fusedrnn.LSTM else h0

    def grads():
        m.zero_grad()
        x.grad = h0.grad = None
        out = m(x, hx)
        sum(t.float().square().sum() for t in _states(out)).backward()
        return [x.grad, h0.grad] + [p.grad for p in m.parameters()]

    want = grads()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = grads()
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        scale = w.abs().max().item()
        torch.testing.assert_close(g, w, rtol=0, atol=3 * TOL[torch.bfloat16]["atol"] * scale)


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_autocast_bf16(name, backend):
    cls, torch_cls = CELLS[name]
    torch.manual_seed(0)
    m = cls(5, 6, backend=backend)
    x, h = torch.randn(4, 5), torch.randn(4, 6)
    hx = (h, torch.randn(4, 6)) if cls is fusedrnn.LSTMCell else h
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _states(m(x, hx))
    assert all(t.dtype == torch.bfloat16 for t in got)
    ref = _reference(m, torch_cls, {}, (5, 6), torch.bfloat16)
    rnd = lambda t: t.bfloat16().double()  # noqa: E731
    want = _states(ref(rnd(x), tuple(map(rnd, hx)) if isinstance(hx, tuple) else rnd(hx)))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, **TOL[torch.bfloat16])


@pytest.mark.parametrize("name", list(LAYERS) + list(CELLS))
def test_half_on_cpu(name, backend):
    """``.half()`` runs on CPU as torch.nn's does: float16 in and out, float32 inside."""
    if name in LAYERS:
        cls, torch_cls, kw = LAYERS[name]
        m, x, args = _layer(cls, kw, backend), torch.randn(3, 7, 5), (5, 6)
        kw = dict(num_layers=2, bidirectional=True, batch_first=True, **kw)
    else:
        (cls, torch_cls), kw = CELLS[name], {}
        torch.manual_seed(0)
        m, x, args = cls(5, 6, backend=backend), torch.randn(4, 5), (5, 6)
    m = m.half()
    got = _states(m(x.half()))
    assert all(t.dtype == torch.float16 for t in got)
    want = _states(_reference(m, torch_cls, kw, args, torch.float16)(x.half().double()))
    assert [w.shape for w in want] == [g.shape for g in got]
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, **TOL[torch.float16])
    _first(m(x.half())).float().sum().backward()
    assert all(p.grad.dtype == torch.float16 for p in m.parameters())


def test_autocast_fp16_on_cpu(backend):
    m = _layer(fusedrnn.GRU, {}, backend)
    x = torch.randn(3, 7, 5)
    with torch.autocast("cpu", dtype=torch.float16):
        got = _states(m(x))
    assert all(t.dtype == torch.float16 for t in got)
    ref = _reference(m, torch.nn.GRU, dict(num_layers=2, bidirectional=True, batch_first=True),
                     (5, 6), torch.float16)
    for g, w in zip(got, _states(ref(x.half().double()))):
        torch.testing.assert_close(g.double(), w, **TOL[torch.float16])


def test_float64_is_not_autocast(backend):
    """Autocast leaves float64 alone, as it does for every torch op."""
    m = _layer(fusedrnn.LSTM, {}, backend).double()
    x = torch.randn(3, 7, 5, dtype=torch.float64)
    want = m(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = m(x)[0]
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_policy_reads_the_inputs_device():
    x = torch.randn(2, 3)
    assert _amp.autocast_dtype(x) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _amp.autocast_dtype(x) == torch.bfloat16
        assert _amp.autocast_dtype(x.double()) is None
        assert _amp.autocast_dtype(torch.ones(2, dtype=torch.long)) is None
    # meta tensors stand in for another device type: CPU autocast must not apply to them
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _amp.autocast_dtype(x.to("meta")) is None


def test_compile_under_autocast():
    """torch.compile traces the autocast read and the casts: same numbers as eager autocast."""
    torch._dynamo.reset()
    m = _layer(fusedrnn.LSTM, {}, "cpu" if "cpu" in fusedrnn.available_backends() else "reference")
    x = torch.randn(3, 7, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = m(x)[0]
        with torch._dynamo.config.patch(allow_rnn=True):
            got = torch.compile(m, fullgraph=True, backend="aot_eager")(x)[0]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=0)


_NO_BF16_CPU = """
import torch, fusedrnn
torch.manual_seed(0)
m, x = fusedrnn.LSTM(5, 6), torch.randn(4, 3, 5)
with torch.autocast("cpu", dtype=torch.bfloat16):
    y = m(x)[0]
torch.save(y, {path!r})
"""


@pytest.mark.skipif("cpu" not in fusedrnn.available_backends(), reason="needs the C++ backend")
def test_autocast_without_native_bf16(tmp_path):
    """oneDNN limited to AVX2 (no native bf16 instructions), where torch.nn's LSTM fails under
    CPU autocast: fusedrnn's runs, with the numbers it gives on this machine."""
    path = str(tmp_path / "y.pt")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    subprocess.run([sys.executable, "-c", _NO_BF16_CPU.format(path=path)], env=env,
                   check=True, timeout=120)
    torch.manual_seed(0)
    m, x = fusedrnn.LSTM(5, 6), torch.randn(4, 3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = m(x)[0]
    torch.testing.assert_close(torch.load(path), want, **TOL[torch.bfloat16])


@pytest.mark.parametrize("name", ["LSTM", "RNN-relu"])
def test_same_dtypes_as_torch_nn_where_it_runs(name, backend):
    """Where torch.nn's CPU autocast runs the layer in bf16 (its LSTM needs native bf16), the
    dtypes returned agree; its GRU stays float32 on CPU (docs/ecosystem.md)."""
    cls, torch_cls, kw = LAYERS[name]
    ours = _layer(cls, kw, backend)
    ref = torch_cls(5, 6, num_layers=2, bidirectional=True, batch_first=True, **kw)
    x = torch.randn(3, 7, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        try:
            want = _states(ref(x))
        except RuntimeError as e:  # oneDNN without native bf16: nothing to compare with
            pytest.skip(f"torch.nn fails here: {e}")
        got = _states(ours(x))
    assert [t.dtype for t in got] == [t.dtype for t in want]
