"""The CPU backend (csrc/cpu) against the float64 reference, over the option grid of the contract.

Every test runs with the C++ NaN-poison hook on: buffers and outputs the ops allocate start as NaN,
so an element a loop forgets to write fails the comparison.
"""

from __future__ import annotations

import itertools
import re

import pytest
import torch

import fusedrnn
from fusedrnn.ops import cpu
from fusedrnn.ops.cells import GATES
from fusedrnn.ops.cells import TORCH_MODES as MODES  # the LN cells: test_layernorm_cells.py
from fusedrnn.ops.reference import recurrence_ref

from conftest import TOL

pytestmark = pytest.mark.skipif(cpu.unavailable() is not None, reason=str(cpu.unavailable()))


@pytest.fixture(autouse=True)
def poison():
    fusedrnn._ext._C._set_debug_poison(True)
    yield
    fusedrnn._ext._C._set_debug_poison(False)


def make_lengths(kind: str, T: int, B: int):
    if kind == "none":
        return None
    g = torch.Generator().manual_seed(T * 31 + B)
    lens = torch.randint(0, T + 1, (B,), generator=g)
    lens[0] = T  # at least one full sequence, and with B > 1 a zero length below
    if B > 2:
        lens[2] = 0
    if kind == "sorted":
        return lens.sort(descending=True).values
    if B > 1 and bool((lens[:-1] >= lens[1:]).all()):
        lens = lens.flip(0)  # make sure "unsorted" really is
    return lens


def make_inputs(mode, T, B, H, *, proj=0, bias=True, c0=True, dtype=torch.float64, seed=0):
    """float64 leaf tensors of one op call; P = proj (0: none)."""
    g = torch.Generator().manual_seed(seed)
    G = GATES[mode]
    Ho = proj or H

    def r(*shape, scale=0.5):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()

    # weights at torch.nn's init scale (1/sqrt(fan_in)), so that float32 gradients stay O(1)
    # and its rounding is comparable to the tolerance table
    return dict(
        xw=r(T, B, G * H),
        w_hh=r(G * H, Ho, scale=Ho ** -0.5),
        b_hh=r(G * H) if bias else None,
        h0=r(B, Ho),
        c0=r(B, H) if (mode == "LSTM" and c0) else None,
        w_hr=r(proj, H, scale=H ** -0.5) if proj else None,
    )


def run(fn, mode, inp, lengths, reverse, dtype, upstream):
    """Outputs and input gradients of ``fn`` on ``inp`` cast to ``dtype``; loss uses y, h_T, c_T."""
    args = {k: (None if v is None else v.detach().to(dtype).requires_grad_()) for k, v in inp.items()}
    y, h, c = fn(mode, args["xw"], args["w_hh"], args["b_hh"], args["h0"], args["c0"], lengths,
                 reverse, args["w_hr"])
    gy, gh, gc = upstream
    loss = (y.double() * gy).sum() + (h.double() * gh).sum()
    if c is not None:
        loss = loss + (c.double() * gc).sum()
    names = [k for k, v in args.items() if v is not None]
    grads = torch.autograd.grad(loss, [args[k] for k in names])
    outs = {"y": y, "h_T": h}
    if c is not None:
        outs["c_T"] = c
    return outs, dict(zip(names, grads))


def compare(mode, T, B, H, lengths_kind, reverse, proj, c0, bias, dtype):
    inp = make_inputs(mode, T, B, H, proj=proj, c0=c0, bias=bias, seed=T + 7 * B + H)
    lengths = make_lengths(lengths_kind, T, B)
    Ho = proj or H
    g = torch.Generator().manual_seed(1)
    upstream = (torch.randn(T, B, Ho, generator=g, dtype=torch.float64),
                torch.randn(B, Ho, generator=g, dtype=torch.float64),
                torch.randn(B, H, generator=g, dtype=torch.float64))
    ref_out, ref_grad = run(recurrence_ref, mode, inp, lengths, reverse, torch.float64, upstream)
    out, grad = run(cpu.recurrence, mode, inp, lengths, reverse, dtype, upstream)
    tol = TOL[dtype]
    assert out.keys() == ref_out.keys() and grad.keys() == ref_grad.keys()
    for k in ref_out:
        assert out[k].dtype == dtype
        torch.testing.assert_close(out[k].double(), ref_out[k], **tol, msg=lambda m: f"{k}: {m}")
    for k in ref_grad:
        torch.testing.assert_close(grad[k].double(), ref_grad[k], **tol,
                                   msg=lambda m: f"d{k}: {m}")


GRID = [
    pytest.param(mode, T, B, lk, rev, id=f"{mode}-T{T}-B{B}-len_{lk}-{'rev' if rev else 'fwd'}")
    for mode, T, B, lk, rev in itertools.product(
        MODES, (1, 7), (1, 5), ("none", "sorted", "unsorted"), (False, True))
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("mode,T,B,lengths_kind,reverse", GRID)
def test_parity_grid(mode, T, B, lengths_kind, reverse, dtype):
    compare(mode, T, B, 13, lengths_kind, reverse, proj=0, c0=True, bias=True, dtype=dtype)


LSTM_VARIANTS = [
    pytest.param(proj, c0, bias, lk, rev,
                 id=f"proj{proj}-c0_{c0}-bias_{bias}-len_{lk}-{'rev' if rev else 'fwd'}")
    for proj, c0, bias, lk, rev in itertools.product(
        (0, 5), (True, False), (True, False), ("none", "sorted", "unsorted"), (False, True))
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("proj,c0,bias,lengths_kind,reverse", LSTM_VARIANTS)
def test_lstm_variants(proj, c0, bias, lengths_kind, reverse, dtype):
    compare("LSTM", 6, 5, 13, lengths_kind, reverse, proj=proj, c0=c0, bias=bias, dtype=dtype)


@pytest.mark.parametrize("mode", MODES)
def test_no_bias_and_wide(mode):
    compare(mode, 9, 4, 40, "unsorted", True, proj=0, c0=False, bias=False, dtype=torch.float64)


@pytest.mark.parametrize("mode", MODES)
def test_large_batch_threads(mode):
    """Enough rows and units that at::parallel_for splits the pointwise pass across threads."""
    compare(mode, 4, 64, 96, "sorted", False, proj=0, c0=True, bias=True, dtype=torch.float32)


@pytest.mark.parametrize("mode", MODES)
def test_bfloat16(mode):
    compare(mode, 5, 3, 8, "unsorted", False, proj=0, c0=True, bias=True, dtype=torch.bfloat16)


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch(mode):
    inp = make_inputs(mode, 4, 0, 6)
    y, h, c = cpu.recurrence(mode, *(inp[k] for k in ("xw", "w_hh", "b_hh", "h0", "c0")))
    assert y.shape == (4, 0, 6) and h.shape == (0, 6)
    (y.sum() + h.sum()).backward()
    assert inp["w_hh"].grad.abs().sum() == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["none", "unsorted"])
def test_gradcheck(mode, kind):
    proj = 2 if mode == "LSTM" else 0
    inp = make_inputs(mode, 3, 3, 3, proj=proj)
    lengths = make_lengths(kind, 3, 3)
    keys = [k for k, v in inp.items() if v is not None]

    def f(*ts):
        a = dict(zip(keys, ts))
        y, h, c = cpu.recurrence(mode, a["xw"], a["w_hh"], a.get("b_hh"), a["h0"], a.get("c0"),
                                 lengths, True, a.get("w_hr"))
        return (y, h) if c is None else (y, h, c)

    assert torch.autograd.gradcheck(f, [inp[k] for k in keys])


def _op_args(mode, proj=0, lengths="unsorted"):
    inp = make_inputs(mode, 4, 3, 5, proj=proj)
    return (mode, inp["xw"], inp["w_hh"], inp["b_hh"], inp["h0"], inp["c0"],
            make_lengths(lengths, 4, 3), True, inp["w_hr"])


OPCHECK_CASES = [(m, 0) for m in MODES] + [("LSTM", 3)]  # LSTM: saved activations / projection


@pytest.mark.parametrize("save", [True, False], ids=["save", "inference"])
@pytest.mark.parametrize("mode,proj", OPCHECK_CASES)
def test_opcheck_forward(mode, proj, save):
    torch.library.opcheck(torch.ops.fusedrnn.recurrence_fwd.default,
                          (*_op_args(mode, proj=proj), save))


def test_inference_saves_nothing():
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in _op_args("LSTM")]
    ws = torch.ops.fusedrnn.recurrence_fwd(*args, False)[3]
    assert ws.numel() == 0
    ws = torch.ops.fusedrnn.recurrence_fwd(*args, True)[3]
    assert ws.shape == (4, 3, 5 * 5)  # the cell states and the 4 gate activations per unit


@pytest.mark.parametrize("mode,proj", OPCHECK_CASES)
def test_opcheck_backward(mode, proj):
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in _op_args(mode, proj=proj)]
    y, h, c, cs = torch.ops.fusedrnn.recurrence_fwd(*args)
    _, xw, w_hh, b_hh, h0, c0, lengths, rev, w_hr = args
    bwd_args = (mode, torch.randn_like(y), torch.randn_like(h),
                torch.randn_like(c) if mode == "LSTM" else None,
                xw, w_hh, b_hh, h0, c0, lengths, rev, w_hr, y, cs)
    torch.library.opcheck(torch.ops.fusedrnn.recurrence_bwd.default, bwd_args)


@pytest.mark.parametrize("mode", MODES)
def test_gradgradcheck(mode):
    """Double backward (create_graph=True) goes through the differentiable reference."""
    proj = 2 if mode == "LSTM" else 0
    inp = make_inputs(mode, 3, 2, 3, proj=proj)
    lengths = make_lengths("unsorted", 3, 2)
    keys = [k for k, v in inp.items() if v is not None]

    def f(*ts):
        a = dict(zip(keys, ts))
        y, h, c = cpu.recurrence(mode, a["xw"], a["w_hh"], a.get("b_hh"), a["h0"], a.get("c0"),
                                 lengths, False, a.get("w_hr"))
        return (y, h) if c is None else (y, h, c)

    assert torch.autograd.gradgradcheck(f, [inp[k] for k in keys])


def test_errors_name_argument():
    inp = make_inputs("GRU", 3, 2, 4)
    with pytest.raises(ValueError, match="dtypes.*xw.*float16"):
        cpu.recurrence("GRU", inp["xw"].half(), inp["w_hh"].half(), None, inp["h0"].half())
    with pytest.raises(ValueError, match="w_hh must have shape"):
        cpu.recurrence("GRU", inp["xw"], inp["w_hh"][:, :3], None, inp["h0"])
    with pytest.raises(RuntimeError, match="mode must be one of"):
        torch.ops.fusedrnn.recurrence_fwd("LSTMX", inp["xw"], inp["w_hh"], None, inp["h0"],
                                          None, None, False, None)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_torch_compile_fullgraph_op(mode):
    inp = make_inputs(mode, 5, 3, 6, dtype=torch.float32)
    args = {k: (None if v is None else v.detach().float().requires_grad_()) for k, v in inp.items()}
    lengths = make_lengths("sorted", 5, 3)

    def f(xw, w_hh, b_hh, h0):
        y, h, _ = fusedrnn.recurrence(mode, torch.tanh(xw), w_hh, b_hh, h0, None, lengths,
                                      backend="cpu")
        return (y.square().sum() + h.sum()) * 0.5

    eager = f(args["xw"], args["w_hh"], args["b_hh"], args["h0"])
    g_eager = torch.autograd.grad(eager, [args["xw"], args["w_hh"]])
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(
        args["xw"], args["w_hh"], args["b_hh"], args["h0"])
    g_comp = torch.autograd.grad(compiled, [args["xw"], args["w_hh"]])
    torch.testing.assert_close(compiled, eager, **TOL[torch.float32])
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


# The instruction-set paths of the fused loops (csrc/cpu/isa_*.cpp): "auto" runs the best one the
# CPU has, so these pin each one the CPU can run, at sizes on and off every register-block edge
# (AVX-512: 16-lane unit blocks, 6-8 row blocks; AVX2: 8 lanes, 2-4 rows; base: 4 lanes).
ISAS = fusedrnn._ext._C._cpu_isas() if cpu.unavailable() is None else []
ISA_CASES = [
    pytest.param(mode, T, B, H, proj, lk, rev, id=f"{mode}-T{T}-B{B}-H{H}-P{proj}-len_{lk}-"
                 f"{'rev' if rev else 'fwd'}")
    for mode, T, B, H, proj, lk, rev in [
        *[(m, 5, B, H, 0, lk, rev) for m in MODES
          for B, H, lk, rev in ((1, 1, "none", False), (3, 17, "sorted", True),
                                (7, 33, "unsorted", False), (13, 16, "unsorted", True),
                                (9, 65, "none", True))],
        ("LSTM", 6, 7, 13, 5, "sorted", True),
        ("LSTM", 6, 11, 20, 17, "unsorted", False),
        ("LSTM", 4, 2, 33, 1, "none", False),
        # enough work for partition_rows to use every thread (rows balanced by length)
        ("LSTM", 9, 37, 70, 0, "unsorted", False),
        ("GRU", 9, 37, 70, 0, "sorted", True),
    ]
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mode,T,B,H,proj,lengths_kind,reverse", ISA_CASES)
def test_isa_paths_float32(monkeypatch, isa, mode, T, B, H, proj, lengths_kind, reverse):
    monkeypatch.setenv("FUSEDRNN_CPU_ISA", isa)
    assert fusedrnn._ext._C._cpu_isa() == isa
    compare(mode, T, B, H, lengths_kind, reverse, proj=proj, c0=True, bias=True,
            dtype=torch.float32)


def test_cell_math_is_inlined_into_the_loops():
    """Every call in the unit loops must inline for them to vectorise: an out-of-line copy of a
    cell function (cells.h: fr_fast_expf, CellOps<...>::fwd, lstm_fwd, ...) in the library means a
    loop calls it per unit (that made the LSTM forward 4-15x slower once). cells.h forces them
    inline (FR_INLINE); this reads the library's symbol table."""
    import shutil
    import subprocess

    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    out = subprocess.run([nm, "-C", fusedrnn._ext._C.__file__], capture_output=True, text=True,
                         check=True).stdout
    pattern = re.compile(r"fusedrnn::(fr_\w+|CellOps<[^>]*>::\w+|\w+_(fwd|bwd|out|out_bwd))\b(<|\()")
    leaked = sorted({m.group(0) for m in pattern.finditer(out)
                     if "::cpu::" not in m.group(0) and "::minrnn::" not in m.group(0)})
    assert not leaked, f"out-of-line cell math in {fusedrnn._ext._C.__file__}: {leaked[:8]}"


def test_isa_env_error(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_CPU_ISA", "sse9")
    inp = make_inputs("GRU", 3, 2, 4)
    with pytest.raises(RuntimeError, match="FUSEDRNN_CPU_ISA must be one of auto, avx512, avx2"):
        cpu.recurrence("GRU", inp["xw"].float(), inp["w_hh"].float(), None, inp["h0"].float())


def _grads_f32(mode, inp, lengths, reverse, upstream):
    return run(cpu.recurrence, mode, inp, lengths, reverse, torch.float32, upstream)


def _upstream(T, B, H, Ho, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, B, Ho, generator=g, dtype=torch.float64),
            torch.randn(B, Ho, generator=g, dtype=torch.float64),
            torch.randn(B, H, generator=g, dtype=torch.float64))


def _on_1_and_2_threads(fn):
    """fn() with 1 thread, then with 2 (the previous count restored)."""
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fn()
        torch.set_num_threads(2)
        return one, fn()
    finally:
        torch.set_num_threads(prev)


def _assert_bitwise(a, b, what):
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs (max {(a[k] - b[k]).abs().max()})"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mode,proj", [(m, 0) for m in MODES] + [("LSTM", 7)])
def test_bitwise_across_thread_counts(monkeypatch, isa, mode, proj):
    """Rows are split over threads, never a row's arithmetic: 1 and 2 threads agree bitwise
    (outputs and every gradient, the weight gradients included)."""
    monkeypatch.setenv("FUSEDRNN_CPU_ISA", isa)
    T, B, H = 12, 40, 48
    inp = make_inputs(mode, T, B, H, proj=proj, seed=3)
    lengths = make_lengths("unsorted", T, B)
    up = _upstream(T, B, H, proj or H)
    one, two = _on_1_and_2_threads(lambda: _grads_f32(mode, inp, lengths, True, up))
    _assert_bitwise(one[0], two[0], "outputs")
    _assert_bitwise(one[1], two[1], "gradients")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lengths_kind,reverse", [("none", False), ("short", True)])
def test_unit_split_bitwise(monkeypatch, isa, mode, lengths_kind, reverse):
    """B = 1 with 2 threads: the threads split the units of the one row (meeting at a barrier
    after every step) instead of idling; outputs and every gradient are bitwise those of one
    thread. H = 96 makes each step big enough for the split (recurrence_fwd.cpp
    unit_split_threads) and gives the threads unequal panel counts for some cells."""
    monkeypatch.setenv("FUSEDRNN_CPU_ISA", isa)
    T, B, H = 11, 1, 96
    inp = make_inputs(mode, T, B, H, seed=7)
    lengths = None if lengths_kind == "none" else torch.tensor([T - 4])
    up = _upstream(T, B, H, H)
    one, two = _on_1_and_2_threads(lambda: _grads_f32(mode, inp, lengths, reverse, up))
    _assert_bitwise(one[0], two[0], "outputs")
    _assert_bitwise(one[1], two[1], "gradients")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_unit_split_reset_zoneout_saved(mode, dtype):
    """The split forward with a per-step reset and a zoneout mask, saving the workspace: every
    result of the op (y, h_T, c_T, ws) is bitwise the one-thread result."""
    T, B, H = 9, 1, 96
    G = GATES[mode]
    g = torch.Generator().manual_seed(11)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype) * 0.5  # noqa: E731
    zw = 2 * H if mode == "LSTM" else H
    args = (mode, r(T, B, G * H), r(G * H, H), r(G * H), r(B, H), r(B, H) if mode == "LSTM"
            else None, None, False, None, True,
            (torch.arange(T) % 4 == 2).to(dtype)[:, None].contiguous(),
            (torch.rand(T, B, zw, generator=g) < 0.3).to(dtype))
    one, two = _on_1_and_2_threads(lambda: torch.ops.fusedrnn.recurrence_fwd(*args))
    for name, a, b in zip(("y", "h_T", "c_T", "ws"), one, two):
        assert torch.equal(a, b), f"{name} differs"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mode,proj", [(m, 0) for m in MODES] + [("LSTM", 7)])
def test_batch_invariance(monkeypatch, isa, mode, proj):
    """A row's outputs and its input gradients (d_xw, dh0, dc0) are bitwise the same whether it
    runs alone or in a batch of 32. (Weight gradients are sums over the batch: not per row.)"""
    monkeypatch.setenv("FUSEDRNN_CPU_ISA", isa)
    T, B, H = 9, 32, 37
    inp = make_inputs(mode, T, B, H, proj=proj, seed=5)
    lengths = make_lengths("unsorted", T, B)
    up = _upstream(T, B, H, proj or H)
    out, grad = _grads_f32(mode, inp, lengths, False, up)
    for b in (0, 2, 5, 31):
        row = {k: (v[:, b:b + 1] if k == "xw" else v[b:b + 1] if k in ("h0", "c0") else v)
               if v is not None else None for k, v in inp.items()}
        row = {k: (v.detach().requires_grad_() if v is not None else None) for k, v in row.items()}
        up_b = (up[0][:, b:b + 1], up[1][b:b + 1], up[2][b:b + 1])
        o1, g1 = _grads_f32(mode, row, lengths[b:b + 1], False, up_b)
        assert torch.equal(o1["y"], out["y"][:, b:b + 1]), f"row {b}: y"
        assert torch.equal(o1["h_T"], out["h_T"][b:b + 1]), f"row {b}: h_T"
        if "c_T" in out:
            assert torch.equal(o1["c_T"], out["c_T"][b:b + 1]), f"row {b}: c_T"
        assert torch.equal(g1["xw"], grad["xw"][:, b:b + 1]), f"row {b}: d_xw"
        assert torch.equal(g1["h0"], grad["h0"][b:b + 1]), f"row {b}: dh0"
        if "c0" in g1:
            assert torch.equal(g1["c0"], grad["c0"][b:b + 1]), f"row {b}: dc0"


@pytest.mark.parametrize("mode", MODES)
def test_padding_never_changes_a_result(mode):
    """Values in the padded steps of xw and dy (t >= length) reach no output or gradient."""
    T, B, H = 8, 6, 21
    inp = make_inputs(mode, T, B, H, seed=9)
    lengths = make_lengths("unsorted", T, B)
    up = _upstream(T, B, H, H)
    out, grad = _grads_f32(mode, inp, lengths, True, up)
    pad = torch.arange(T)[:, None] >= lengths[None, :]  # [T, B]
    noisy = dict(inp)
    noisy["xw"] = torch.where(pad[..., None], torch.full_like(inp["xw"], 1e3),
                              inp["xw"]).detach().requires_grad_()
    up_noisy = (torch.where(pad[..., None], torch.full_like(up[0], -7.0), up[0]), up[1], up[2])
    out2, grad2 = _grads_f32(mode, noisy, lengths, True, up_noisy)
    _assert_bitwise(out, out2, "outputs")
    for k in grad:
        a, b = grad[k], grad2[k]
        if k == "xw":
            a, b = a[~pad], b[~pad]
            assert torch.equal(grad2["xw"][pad], torch.zeros_like(grad2["xw"][pad]))
        assert torch.equal(a, b), f"d{k} changed with padding"
