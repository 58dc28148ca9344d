"""Numerics of the CUDA C++ backend against the float64 reference.

Without a GPU: the time loops (csrc/cuda/loop.cpp) with a host emulation of the launchers
(tests/cuda_emu/: the same HOST_DEVICE element bodies the __global__ wrappers call, over the same
grid), as CPU ops fusedrnn_emu::. With a GPU (tests marked ``gpu``): the real backend.
"""

from __future__ import annotations

import functools

import pytest
import torch

import fusedrnn
from conftest import TOL
from cuda_utils import (  # noqa: F401  (emu is a fixture)
    EMU, GRID, LENGTHS, VARIANTS, check_parity, emu, emu_recurrence, make_inputs,
)
from fusedrnn.ops import cuda as cuda_backend
from fusedrnn.ops.cells import CELL_STATE, CELLS, GATES, TORCH_MODES
from fusedrnn.ops.reference import recurrence_ref


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


# ---------------------------------------------------------------------------------------------
# The LayerNorm cells (cells.h norm_recurrent / norm_state): the row kernels of launchers.h, run
# by the host emulation with several host threads per row (tests/cuda_emu/host_launchers.cpp)

LN_MODES = ("LN_LSTM", "LN_GRU")
LN_VARIANTS = {  # id: (lengths, reverse, clip, bias, hx, reset, zoneout)
    "plain": (None, False, None, True, True, False, False),
    "reverse": (None, True, None, True, False, False, False),
    "lengths": (LENGTHS, False, None, False, True, False, False),
    "lengths-reverse": (LENGTHS, True, None, True, True, False, False),
    "clip-lengths-reverse": (LENGTHS, True, 0.05, True, True, False, False),
    "reset": (None, False, None, True, True, True, False),
    "reset-lengths-reverse": (LENGTHS, True, None, True, True, True, False),
    "zoneout": (None, False, None, True, True, False, True),
    "reset-zoneout-lengths": (LENGTHS, False, None, True, True, True, True),
    "reset-zoneout-reverse": (LENGTHS, True, None, True, False, True, True),
}
LN_GRID = [(m, v, d) for m in LN_MODES for v in LN_VARIANTS for d in (torch.float64,)]
LN_GRID += [(m, v, torch.float32) for m in LN_MODES for v in ("plain", "reset-zoneout-lengths")]
LN_GRID += [(m, "lengths-reverse", d) for m in LN_MODES for d in (torch.bfloat16, torch.float16)]


def ln_inputs(mode, dtype, T, B, H, *, bias=True, hx=True, reset=False, zoneout=False, seed=0):
    """Random op inputs of an LN cell, rounded to ``dtype``: a dict of the op's tensors. The gains
    are 1 + noise and the state bias noise (so that a dropped gain or bias shows)."""
    g = torch.Generator().manual_seed(seed)
    G, lstm = GATES[mode], CELL_STATE[mode]

    def r(*shape, scale=0.6, shift=0.0):
        v = torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift
        return v.to(dtype)

    cp = [r(k * H, scale=0.3, shift=1.0 if name.endswith("weight") else 0.0)
          for name, k in CELLS[mode].cell_params]
    out = dict(xw=r(T, B, G * H), w_hh=r(G * H, H), b_hh=r(G * H) if bias else None,
               h0=r(B, H) if hx else torch.zeros(B, H, dtype=dtype),
               c0=r(B, H) if lstm and hx else None, cell_params=cp, reset=None, zoneout=None)
    if reset:  # segments start at a few (t, b), step 0 included
        out["reset"] = (torch.rand(T, B, generator=g) < 0.3).to(dtype)
        out["reset"][0, 0] = 1
    if zoneout:  # a keep-old mask, h part then c part
        out["zoneout"] = (torch.rand(T, B, H * (2 if lstm else 1), generator=g) < 0.4).to(dtype)
    return out


def ln_run(fn, ins, dtype, upcast):
    """Outputs and the gradients of a random linear loss over (y, h_T, c_T) w.r.t. every
    differentiable input (xw, w_hh, b_hh, h0, c0, each cell param)."""
    def leaf(t):
        return None if t is None else (t.double() if upcast else t).detach().clone().requires_grad_()

    names = ("xw", "w_hh", "b_hh", "h0", "c0")
    lv = {k: leaf(ins[k]) for k in names}
    cp = [leaf(p) for p in ins["cell_params"]]
    side = {k: None if ins[k] is None else (ins[k].double() if upcast else ins[k])
            for k in ("reset", "zoneout")}
    y, h, c = fn(*(lv[k] for k in names), cp, **side)
    g = torch.Generator().manual_seed(7)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)
                .to(dtype).double()).sum() for o in (y, h, c) if o is not None)
    loss.backward()
    grads = {k: lv[k].grad for k in names if lv[k] is not None}
    grads.update({f"cell_params[{i}]": p.grad for i, p in enumerate(cp)})
    return {"y": y, "h_T": h, "c_T": c}, grads


def check_ln_parity(mode, dtype, ins, lengths, reverse, clip):
    def ref(xw, w, b, h0, c0, cp, reset, zoneout):
        return recurrence_ref(mode, xw, w, b, h0, c0, lengths, reverse, None,
                              recurrent_grad_clip=clip, reset=reset, zoneout=zoneout,
                              cell_params=cp)

    def ours(xw, w, b, h0, c0, cp, reset, zoneout):
        return cuda_backend._recurrence(EMU, mode, xw, w, b, h0, c0, lengths, reverse, None,
                                        clip, reset=reset, zoneout=zoneout, cell_params=cp)

    out_r, g_r = ln_run(ref, ins, dtype, upcast=True)
    out_o, g_o = ln_run(ours, ins, dtype, upcast=False)
    assert (out_o["c_T"] is None) == (not CELL_STATE[mode])
    n_in = sum(ins[k] is not None for k in ("xw", "w_hh", "b_hh", "h0", "c0"))
    assert set(g_o) == set(g_r) and len(g_o) == n_in + len(ins["cell_params"])
    for name, e in list(out_r.items()) + list(g_r.items()):
        a = out_o[name] if name in out_o else g_o[name]
        if e is None and a is None:
            continue
        if e is None:  # autograd's None for an input the result does not depend on (T = 0)
            e = torch.zeros_like(a, dtype=torch.float64)
        assert a is not None and a.dtype == dtype, (name, None if a is None else a.dtype)
        torch.testing.assert_close(a.double(), e, **TOL[dtype], msg=lambda m: f"{name}: {m}")
    return g_r


@pytest.mark.parametrize("mode,variant,dtype", LN_GRID,
                         ids=[f"{m}-{v}-{str(d)[6:]}" for m, v, d in LN_GRID])
def test_emulated_layernorm_parity(emu, nan_poison, mode, variant, dtype):
    lengths, reverse, clip, bias, hx, reset, zoneout = LN_VARIANTS[variant]
    ins = ln_inputs(mode, dtype, T=7, B=5, H=13, bias=bias, hx=hx, reset=reset, zoneout=zoneout)
    check_ln_parity(mode, dtype, ins, lengths, reverse, clip)


@pytest.mark.parametrize("mode", LN_MODES)
@pytest.mark.parametrize("T,B,H", [(1, 1, 13), (0, 3, 4), (9, 2, 1), (4, 3, 70)], ids=str)
def test_emulated_layernorm_odd_sizes(emu, mode, T, B, H):
    # H = 1: the state LN of one unit is 0 (n = bias); H = 70: rows longer than a block of host
    # threads many times over
    ins = ln_inputs(mode, torch.float64, T, B, H)
    check_ln_parity(mode, torch.float64, ins, None, True, None)


@pytest.mark.parametrize("mode", LN_MODES)
def test_emulated_layernorm_params_matter(emu, mode):
    # the parity above must see the LN parameters: other gains give other outputs
    ins = ln_inputs(mode, torch.float64, T=4, B=3, H=5)
    run = lambda cp: emu_recurrence_ln(mode, ins, cp)[0]  # noqa: E731
    base = run(ins["cell_params"])
    for k in range(len(ins["cell_params"])):
        cp = [p.clone() for p in ins["cell_params"]]
        cp[k] = cp[k] + 0.5
        assert not torch.allclose(run(cp), base), k


def emu_recurrence_ln(mode, ins, cp, lengths=None, reverse=False):
    return cuda_backend._recurrence(EMU, mode, ins["xw"], ins["w_hh"], ins["b_hh"], ins["h0"],
                                    ins["c0"], lengths, reverse, None, None, reset=ins["reset"],
                                    zoneout=ins["zoneout"], cell_params=cp)


@pytest.mark.parametrize("mode", LN_MODES)
@pytest.mark.parametrize("carry", ["none", "reset-zoneout"])
def test_emulated_layernorm_gradcheck(emu, mode, carry):
    ins = ln_inputs(mode, torch.float64, T=4, B=3, H=3, reset=carry != "none",
                    zoneout=carry != "none", seed=3)
    names = [k for k in ("xw", "w_hh", "b_hh", "h0", "c0") if ins[k] is not None]
    n = len(names)
    L = torch.tensor([4, 2, 3])

    def f(*ts):
        kw = dict(ins, **dict(zip(names, ts[:n])))
        y, h, c = emu_recurrence_ln(mode, kw, list(ts[n:]), L, True)
        return (y, h) if c is None else (y, h, c)

    leaves = [ins[k].clone().requires_grad_() for k in names]
    leaves += [p.clone().requires_grad_() for p in ins["cell_params"]]
    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("mode", LN_MODES)
def test_emulated_layernorm_opcheck(emu, mode):
    ins = ln_inputs(mode, torch.float32, T=3, B=2, H=4, reset=True, zoneout=True)
    cuda_backend.register(EMU)
    for k in ("xw", "w_hh", "b_hh", "h0", "c0"):
        if ins[k] is not None:
            ins[k].requires_grad_()
    cp = [p.requires_grad_() for p in ins["cell_params"]]
    args = (mode, ins["xw"], ins["w_hh"], ins["b_hh"], ins["h0"], ins["c0"],
            torch.tensor([3, 1]), True, None, 0.0, ins["reset"], ins["zoneout"], cp)
    torch.library.opcheck(emu.cuda_recurrence_fwd.default, args)


def test_emulated_layernorm_errors(emu):
    ins = ln_inputs("LN_LSTM", torch.float32, T=3, B=2, H=4)
    args = ("LN_LSTM", ins["xw"], ins["w_hh"], ins["b_hh"], ins["h0"], ins["c0"], None, False,
            None, 0.0, None, None)
    with pytest.raises(RuntimeError, match="LN_LSTM takes 3 cell_params, got 0"):
        emu.cuda_recurrence_fwd(*args)
    with pytest.raises(RuntimeError, match=r"cell_params\[1\] must have shape \[4\]"):
        emu.cuda_recurrence_fwd(*args, [torch.ones(16), torch.ones(5), torch.zeros(4)])
    with pytest.raises(RuntimeError, match="LSTM takes 0 cell_params, got 1"):
        emu.cuda_recurrence_fwd("LSTM", *args[1:], [torch.ones(16)])
    with pytest.raises(ValueError, match="LN_GRU needs cell_params"):  # the Python surface
        emu_recurrence("LN_GRU", torch.randn(2, 1, 12), torch.randn(12, 4), None,
                       torch.zeros(1, 4), None, None, False, None, None)


@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU"])
def test_emulated_layernorm_layers(emu, monkeypatch, cls):
    """The drop-in layers, 2 layers bidirectional with hx and lengths, on the emulated cuda
    backend vs the same layer on the reference backend: outputs and every gradient by name."""
    import types

    from fusedrnn import backends

    emulated = types.SimpleNamespace(
        __name__="fusedrnn.ops.cuda_emulated",
        recurrence=lambda mode, xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False,
        w_hr=None, recurrent_grad_clip=None, *, reset=None, zoneout=None, cell_params=None:
        cuda_backend._recurrence(EMU, mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr,
                                 recurrent_grad_clip, reset=reset, zoneout=zoneout,
                                 cell_params=cell_params))
    real_resolve = backends.resolve
    monkeypatch.setattr(backends, "resolve", lambda name, device: emulated if name == "cuda"
                        else real_resolve(name, device))
    torch.manual_seed(0)
    lstm = cls == "LayerNormLSTM"
    ref = getattr(fusedrnn, cls)(5, 6, num_layers=2, bidirectional=True, backend="reference",
                                 dtype=torch.float64)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    # built on the reference (construction checks that the real cuda backend loads), then
    # pointed at "cuda", which the patched resolve maps to the emulated ops
    ours = getattr(fusedrnn, cls)(5, 6, num_layers=2, bidirectional=True, backend="reference",
                                  dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    ours.backend = "cuda"
    calls, inner = [], emulated.recurrence

    @functools.wraps(inner)  # keeps the signature, which backends reads (cell_params)
    def counted(*a, **k):
        calls.append(a[0])
        return inner(*a, **k)

    emulated.recurrence = counted
    T, B = 7, 4
    x = torch.randn(T, B, 5, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5, 1])
    h0 = torch.randn(4, B, 6, dtype=torch.float64)
    hx = (h0, torch.randn(4, B, 6, dtype=torch.float64)) if lstm else h0
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    res = []
    for m in (ref, ours):
        out, hn = m(packed, hx)
        y = torch.nn.utils.rnn.pad_packed_sequence(out)[0]
        states = hn if lstm else (hn,)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)).sum()
        loss = loss + sum((s * s).sum() for s in states)
        grads = torch.autograd.grad(loss, list(m.parameters()))
        res.append((y, states, grads))
    torch.testing.assert_close(res[1][0], res[0][0], **TOL[torch.float64])
    for a, e in zip(res[1][1], res[0][1]):
        torch.testing.assert_close(a, e, **TOL[torch.float64])
    for (n, _), a, e in zip(ref.named_parameters(), res[1][2], res[0][2]):
        torch.testing.assert_close(a, e, **TOL[torch.float64], msg=lambda m, n=n: f"{n}: {m}")
    assert any("ln_c" in n or "ln_hh" in n for n, _ in ref.named_parameters())
    assert len(calls) == 4 and set(calls) == {"LN_LSTM" if lstm else "LN_GRU"}  # 2 layers x 2


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


@pytest.mark.gpu
@pytest.mark.parametrize("mode", LN_MODES)
@pytest.mark.parametrize("variant", ["lengths-reverse", "reset-zoneout-lengths"])
def test_gpu_layernorm_parity(mode, variant):
    """The LN cells on the real kernels (block reductions of kernels.cuh), float64 and float32;
    B = 37 rows, H = 45 (rows of 180 and 45 values: more than one pass of a block's threads)."""
    lengths, reverse, clip, bias, hx, reset, zoneout = LN_VARIANTS[variant]
    L = None if lengths is None else lengths.repeat(8)[:37].cuda()
    for dtype in (torch.float64, torch.float32):
        ins = ln_inputs(mode, dtype, T=7, B=37, H=45, bias=bias, hx=hx, reset=reset,
                        zoneout=zoneout)
        ins = {k: (v if v is None else [p.cuda() for p in v] if isinstance(v, list) else v.cuda())
               for k, v in ins.items()}

        def ref(xw, w, b, h0, c0, cp, reset, zoneout):
            return recurrence_ref(mode, xw, w, b, h0, c0, L, reverse, None, reset=reset,
                                  zoneout=zoneout, cell_params=cp)

        def ours(xw, w, b, h0, c0, cp, reset, zoneout):
            return cuda_backend.recurrence(mode, xw, w, b, h0, c0, L, reverse, None, reset=reset,
                                           zoneout=zoneout, cell_params=cp)

        out_r, g_r = ln_run(ref, ins, dtype, upcast=True)
        out_o, g_o = ln_run(ours, ins, dtype, upcast=False)
        for name, e in list(out_r.items()) + list(g_r.items()):
            a = out_o[name] if name in out_o else g_o[name]
            if e is not None:
                torch.testing.assert_close(a.double(), e, **TOL[dtype],
                                           msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.gpu
def test_gpu_layernorm_layer_runs_on_cuda():
    m = fusedrnn.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True, backend="cuda",
                               device="cuda", dtype=torch.float64)
    ref = fusedrnn.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True, backend="reference",
                                 device="cuda", dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, device="cuda", dtype=torch.float64)
    torch.testing.assert_close(m(x)[0], ref(x)[0], **TOL[torch.float64])
