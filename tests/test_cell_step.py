"""The streaming single-step op ``fusedrnn::cell_step`` (csrc/cpu/cell_step.cpp) and the nn cells'
no-grad path through it, including its direct binding (csrc/cpu/cell_step_py.cpp)."""

from __future__ import annotations

import pytest
import torch

import fusedrnn
from fusedrnn.ops import cpu
from fusedrnn.ops.cells import TORCH_MODES as MODES  # cell_step refuses the LN cells

from conftest import TOL

pytestmark = pytest.mark.skipif(cpu.unavailable() is not None, reason=str(cpu.unavailable()))


# B <= 2 runs cell_step's own GEMV, larger B one BLAS GEMM per product; I = 37 and H = 21 give dot
# products with a full vector and a remainder (16 float lanes) and G*H = 21 / 63 / 84 weight rows
# (the GEMV takes 4 at a time: remainders 1 / 3 / 0); I = 7, H = 13 are shorter than one vector.
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("B,I,H", [(1, 37, 21), (2, 7, 13), (3, 7, 13), (5, 37, 21)])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_cell_step_matches_torch_nn(mode, dtype, B, I, H, bias):
    _check_against_torch_nn(mode, dtype, B, I, H, bias)


# Every instruction set the CPU has (cell_step follows FUSEDRNN_CPU_ISA like the fused loops), at
# sizes around the GEMV's blocks: one register is 4 (xmm) / 8 (ymm) / 16 (zmm) floats and the dot
# products take two registers per iteration, then one, then a scalar tail; I = 70, H = 33 run all
# three on every set, I = 64, H = 64 none of the tails.
@pytest.mark.parametrize("isa", fusedrnn._ext._C._cpu_isas() if cpu.unavailable() is None else [])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("B,I,H", [(1, 70, 33), (2, 64, 64), (1, 5, 3)])
def test_cell_step_every_isa(monkeypatch, isa, mode, dtype, B, I, H):
    monkeypatch.setenv("FUSEDRNN_CPU_ISA", isa)
    assert fusedrnn._ext._C._cpu_isa() == isa
    _check_against_torch_nn(mode, dtype, B, I, H, True)


# Weights of >= 1 MiB are split over the threads by units (multiples of 16, the last thread
# taking the remainder): H = 200 (float32, shares 112 + 88, G*H*(I+H) >= 256 Ki floats for every
# cell at I = 1200) and B in {1, 2} (the GEMV path). Every unit's sum is computed as on one
# thread: the same bits on 1 and 2 threads, and torch.nn's result.
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("B", [1, 2])
def test_cell_step_split_over_threads(mode, B):
    H, I = 200, 1200
    G = {"LSTM": 4, "GRU": 3}.get(mode, 1)
    assert G * H * (I + H) * 4 >= 1 << 20  # csrc/cpu/cell_step.cpp kSplitBytes
    _check_against_torch_nn(mode, torch.float32, B, I, H, True)
    args = _step_args(mode, B=B, I=I, H=H)
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(cpu.cell_step(*args))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*outs):
        if a is not None:
            assert torch.equal(a, b)


def _check_against_torch_nn(mode, dtype, B, I, H, bias):
    torch.manual_seed(0)
    cls = {"LSTM": torch.nn.LSTMCell, "GRU": torch.nn.GRUCell}.get(mode, torch.nn.RNNCell)
    kw = {} if cls is not torch.nn.RNNCell else {"nonlinearity": mode[4:].lower()}
    cell = cls(I, H, bias=bias, dtype=dtype, **kw)
    x, h, c = (torch.randn(B, n, dtype=dtype) for n in (I, H, H))
    with torch.no_grad():
        want = cell(x, (h, c)) if mode == "LSTM" else (cell(x, h), None)
        args = (mode, x, cell.weight_ih, cell.bias_ih, cell.weight_hh, cell.bias_hh, h,
                c if mode == "LSTM" else None)
        got = cpu.cell_step(*args)
        # consecutive calls walk the weights in opposite directions: both give the same bits
        again = cpu.cell_step(*args)
    for a, b, a2 in zip(got, want, again):
        if b is not None:
            torch.testing.assert_close(a, b, **TOL[dtype])
            assert torch.equal(a, a2)
    if B == 3 and bias:  # the op's registration (schema, fake) does not depend on the sizes
        torch.library.opcheck(torch.ops.fusedrnn.cell_step.default,
                              (mode, x, cell.weight_ih.detach(), cell.bias_ih.detach(),
                               cell.weight_hh.detach(), cell.bias_hh.detach(), h,
                               c if mode == "LSTM" else None))


def _step_args(mode, B=1, I=9, H=20, dtype=torch.float32):
    G = {"LSTM": 4, "GRU": 3}.get(mode, 1)
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return (mode, r(B, I), r(G * H, I), r(G * H), r(G * H, H), r(G * H), r(B, H),
            r(B, H) if mode == "LSTM" else None)


@pytest.mark.parametrize("mode", MODES)
def test_cell_step_direct_binding_is_the_op(mode):
    """The nn cells' direct binding (csrc/cpu/cell_step_py.cpp) runs the op's kernel: same bits,
    same errors."""
    for dtype, B in ((torch.float32, 1), (torch.float64, 3)):
        args = _step_args(mode, B=B, dtype=dtype)
        want = torch.ops.fusedrnn.cell_step(*args)
        got = fusedrnn._ext._C._cell_step(*args)
        assert got is not NotImplemented
        # consecutive calls: either weight-walk direction; None for the op's empty c'
        assert torch.equal(got[0], want[0])
        assert torch.equal(got[1], want[1]) if mode == "LSTM" else got[1] is None
    bad = list(_step_args(mode))
    bad[5] = bad[5][:-1]  # b_hh one element short
    for fn in (torch.ops.fusedrnn.cell_step, fusedrnn._ext._C._cell_step):
        with pytest.raises(RuntimeError, match="biases must have"):
            fn(*bad)
        with pytest.raises(RuntimeError, match="mode must be one of"):
            fn("LSTMX", *_step_args("LSTM")[1:])


class _Sub(torch.Tensor):
    pass


def test_cell_step_direct_binding_declines_what_the_dispatcher_must_see():
    """NotImplemented for anything the dispatcher would not send straight to the CPU kernel, and
    the nn cell then goes through the op: still torch.nn's numbers."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    args = _step_args("GRU")
    direct = fusedrnn._ext._C._cell_step
    meta = list(args)
    meta[6] = args[6].to("meta")  # another dispatch key (the op itself then rejects it)
    sub = list(args)
    sub[1] = args[1].as_subclass(_Sub)
    assert direct(*meta) is NotImplemented
    assert direct(*sub) is NotImplemented
    with Count():
        assert direct(*args) is NotImplemented
    with torch.profiler.profile():
        assert direct(*args) is NotImplemented

    torch.manual_seed(0)
    ref = torch.nn.GRUCell(9, 20)
    cell = fusedrnn.GRUCell(9, 20, backend="cpu")
    cell.load_state_dict(ref.state_dict())
    x, h = torch.randn(1, 9), torch.randn(1, 20)
    with torch.no_grad():
        want = ref(x, h)
        torch.testing.assert_close(cell(x, h.as_subclass(_Sub)), want, **TOL[torch.float32])
        with Count():
            got = cell(x, h)
        assert any("fusedrnn.cell_step" in op for op in Count.ops)  # the op, seen by the mode
        torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_nn_cell_no_grad_fast_path(kind):
    """Under no_grad the nn cells take the single-op cell_step path; same numbers as torch.nn."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(6, 11, dtype=torch.float64)
    cell = getattr(fusedrnn, kind)(6, 11, dtype=torch.float64, backend="cpu")
    cell.load_state_dict(ref.state_dict())
    x = torch.randn(4, 6, dtype=torch.float64)
    hx = torch.randn(4, 11, dtype=torch.float64)
    state = (hx, torch.randn_like(hx)) if kind == "LSTMCell" else hx
    with torch.no_grad():
        want, got = ref(x, state), cell(x, state)
    for a, b in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_nn_cell_fast_path_parametrized_and_compiled():
    """The fast path reads the weights from _parameters; a parametrized weight lives elsewhere and
    must still be used. torch.compile traces the op (the direct binding is skipped there)."""
    from torch.nn.utils import parametrize

    class Half(torch.nn.Module):
        def forward(self, w):
            return w * 0.5

    torch.manual_seed(0)
    ref = torch.nn.LSTMCell(5, 8)
    cell = fusedrnn.LSTMCell(5, 8, backend="cpu")
    cell.load_state_dict(ref.state_dict())
    for m in (ref, cell):
        parametrize.register_parametrization(m, "weight_hh", Half())
    x, h, c = torch.randn(2, 5), torch.randn(2, 8), torch.randn(2, 8)
    with torch.no_grad():
        want = ref(x, (h, c))
        for a, b in zip(cell(x, (h, c)), want):
            torch.testing.assert_close(a, b, **TOL[torch.float32])
        plain = fusedrnn.GRUCell(5, 8, backend="cpu")
        eager = plain(x, h)
        compiled = torch.compile(plain, backend="eager", fullgraph=True)(x, h)
    torch.testing.assert_close(compiled, eager, **TOL[torch.float32])
