"""Numerics of the CUDA C++ backend against the float64 reference.

Without a GPU: the time loops (csrc/cuda/loop.cpp) with a host emulation of the launchers
(tests/cuda_emu/: the same HOST_DEVICE element bodies the __global__ wrappers call, over the same
grid), as CPU ops fusedrnn_emu::. With a GPU (tests marked ``gpu``): the real backend.
"""

from __future__ import annotations

import pytest
import torch

import fusedrnn
from conftest import TOL
from cuda_utils import (  # noqa: F401  (emu is a fixture)
    EMU, GRID, LENGTHS, VARIANTS, check_parity, emu, emu_recurrence, make_inputs,
)
from fusedrnn.ops import cuda as cuda_backend
from fusedrnn.ops.cells import GATES, TORCH_MODES


@pytest.mark.parametrize("mode,variant,dtype", GRID,
                         ids=[f"{m}-{v}-{str(d)[6:]}" for m, v, d in GRID])
def test_emulated_parity(emu, nan_poison, mode, variant, dtype):
    lengths, reverse, proj, clip, bias, c0 = VARIANTS[variant]
    inputs = make_inputs(mode, dtype, T=7, B=5, H=13, proj=proj, bias=bias, c0=c0)
    check_parity(emu_recurrence, mode, dtype, inputs, lengths, reverse, clip)


@pytest.mark.parametrize("mode", list(TORCH_MODES))
@pytest.mark.parametrize("T,B,H", [(1, 1, 13), (0, 3, 4), (63, 2, 3)], ids=str)
def test_emulated_odd_sizes(emu, mode, T, B, H):
    inputs = make_inputs(mode, torch.float64, T, B, H)
    check_parity(emu_recurrence, mode, torch.float64, inputs, None, True, None)


def test_emulated_clip_is_active(emu):
    # the clip cases above must actually clip: their reference gradients differ from unclipped
    inputs = make_inputs("LSTM", torch.float64, T=7, B=5, H=13)
    g_clip = check_parity(emu_recurrence, "LSTM", torch.float64, inputs, LENGTHS, True, 0.05)
    g_free = check_parity(emu_recurrence, "LSTM", torch.float64, inputs, LENGTHS, True, None)
    assert not torch.allclose(g_clip[0], g_free[0])


@pytest.mark.parametrize("mode", list(TORCH_MODES))
def test_emulated_gradcheck(emu, mode):
    proj = mode == "LSTM"
    inputs = make_inputs(mode, torch.float64, T=4, B=3, H=3, proj=proj)
    present = [t.requires_grad_() for t in inputs if t is not None]
    L = torch.tensor([4, 2, 3])

    def f(*ts):
        it = iter(ts)
        xw, w, b, h0, c0, w_hr = (None if t is None else next(it) for t in inputs)
        y, h, c = emu_recurrence(mode, xw, w, b, h0, c0, L, True, w_hr, None)
        return (y, h) if c is None else (y, h, c)

    assert torch.autograd.gradcheck(f, present)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_emulated_opcheck(emu, mode):
    xw, w, b, h0, c0, w_hr = make_inputs(mode, torch.float32, T=3, B=2, H=4, proj=mode == "LSTM")
    cuda_backend.register(EMU)
    for t in (xw, w, b, h0, c0, w_hr):
        if t is not None:
            t.requires_grad_()
    args = (mode, xw, w, b, h0, c0, torch.tensor([3, 1]), True, w_hr, 0.0, None, None)
    torch.library.opcheck(emu.cuda_recurrence_fwd.default, args)


@pytest.mark.parametrize("mode", ["LN_LSTM", "LN_GRU"])
def test_emulated_loop_refuses_layernorm_cells(emu, mode):
    """The CUDA loop has no per-row reduction: a LayerNorm mode must fail, not run the plain
    cell without its normalisation."""
    base = mode[3:]
    xw, w, b, h0, c0, _ = make_inputs(base, torch.float32, T=3, B=2, H=4)
    with pytest.raises(RuntimeError, match="LayerNorm cell"):
        emu.cuda_recurrence_fwd(mode, xw, w, b, h0, c0, None, False, None, 0.0, None, None)


def test_emulated_errors(emu):
    xw, w, b, h0, c0, _ = make_inputs("LSTM", torch.float32, T=3, B=2, H=4)
    with pytest.raises(TypeError, match="dtype"):
        emu_recurrence("LSTM", xw.int(), w.int(), None, h0.int(), None, None, False, None, None)
    with pytest.raises(ValueError, match="h0 must have shape"):
        emu_recurrence("LSTM", xw, w, b, h0[:1], c0, None, False, None, None)
    with pytest.raises(RuntimeError, match="saved must be"):
        y = torch.zeros(3, 2, 4)
        emu.cuda_recurrence_bwd("LSTM", y, None, None, w, b, h0, c0, None, False, None, 0.0,
                                None, None, y, torch.zeros(3, 2, 5), torch.zeros(3, 2, 4),
                                torch.zeros(0), torch.zeros(0), torch.zeros(0))


# ---------------------------------------------------------------------------------------------
# On a GPU


def cuda_recurrence(mode, xw, w, b, h0, c0, lengths, reverse, w_hr, clip):
    return cuda_backend.recurrence(mode, xw, w, b, h0, c0, lengths, reverse, w_hr, clip)


@pytest.mark.gpu
@pytest.mark.parametrize("mode,variant,dtype", GRID,
                         ids=[f"{m}-{v}-{str(d)[6:]}" for m, v, d in GRID])
def test_gpu_parity(mode, variant, dtype):
    torch.ops.fusedrnn.cuda_set_debug_poison(True)
    try:
        lengths, reverse, proj, clip, bias, c0 = VARIANTS[variant]
        inputs = make_inputs(mode, dtype, T=7, B=37, H=45, proj=proj, bias=bias, c0=c0,
                             device="cuda")
        L = None if lengths is None else lengths.repeat(8)[:37]
        check_parity(cuda_recurrence, mode, dtype, inputs, L, reverse, clip)
    finally:
        torch.ops.fusedrnn.cuda_set_debug_poison(False)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", list(TORCH_MODES))
def test_gpu_large_hidden(mode):
    inputs = make_inputs(mode, torch.float32, T=5, B=3, H=1100, device="cuda")
    check_parity(cuda_recurrence, mode, torch.float32, inputs, None, False, None)


@pytest.mark.gpu
@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_gpu_layer_vs_torch_nn(cls):
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(6, 9, num_layers=2, bidirectional=True).cuda().double()
    ours = getattr(fusedrnn, cls)(6, 9, num_layers=2, bidirectional=True, backend="cuda")
    ours = ours.cuda().double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(11, 4, 6, device="cuda", dtype=torch.float64)
    out_r, out_o = ref(x), ours(x)
    torch.testing.assert_close(out_o[0], out_r[0], **TOL[torch.float64])
    out_r[0].sum().backward()
    out_o[0].sum().backward()
    for (n, p), q in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, **TOL[torch.float64], msg=n)


@pytest.mark.gpu
def test_gpu_opcheck():
    xw, w, b, h0, c0, w_hr = make_inputs("LSTM", torch.float32, T=3, B=2, H=4, proj=True,
                                         device="cuda")
    args = ("LSTM", xw.requires_grad_(), w.requires_grad_(), b, h0, c0,
            torch.tensor([3, 1], device="cuda"), True, w_hr, 0.0, None, None)
    torch.library.opcheck(torch.ops.fusedrnn.cuda_recurrence_fwd.default, args)


@pytest.mark.gpu
def test_gpu_side_stream():
    # GEMMs (at::addmm) and kernels must both run on torch's current stream
    inputs = make_inputs("LSTM", torch.float32, T=9, B=6, H=40, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        check_parity(cuda_recurrence, "LSTM", torch.float32, inputs, LENGTHS.repeat(2)[:6], True,
                     None)
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_gpu_compile_fullgraph():
    # the custom op traces without a graph break (fake impl + registered autograd)
    xw, w, b, h0, c0, _ = make_inputs("GRU", torch.float32, T=5, B=3, H=8, device="cuda")
    xw.requires_grad_()

    def f(xw):
        y, h, _ = cuda_backend.recurrence("GRU", xw, w, b, h0)
        return y.sum() + h.sum()

    eager = torch.autograd.grad(f(xw), xw)[0]
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(xw), xw)[0]
    torch.testing.assert_close(compiled, eager, **TOL[torch.float32])
