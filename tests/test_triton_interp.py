"""Triton backend parity with the reference, forward and backward, on tiny shapes.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1 before fusedrnn is imported); with a GPU the same tests run on CUDA. The
interpreter is slow, so shapes stay tiny (T <= 5, B <= 3, H <= 20). Every option is covered:
each mode, lengths sorted and unsorted, reverse, projection, T=1, T=0, odd H and B, no bias,
no c0, the split path (several programs per batch block) and the bf16/fp16 load-and-cast path.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TOL
from fusedrnn import backends
from fusedrnn.ops.cells import GATES
from fusedrnn.ops.reference import recurrence_ref
from triton_env import DEV, MODES, NAMES, tri  # skips the module without a Triton device
from fusedrnn.ops.triton import launch  # noqa: E402


def make(mode, T, B, H, P=None, bias=True, c0=True, lengths=None, seed=0):
    """float64 inputs of the op contract (None where absent) and lengths [B] int64."""
    g = torch.Generator().manual_seed(seed)
    G, Ho = GATES[mode], P or H

    def r(*shape, scale=0.5):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    ins = dict(xw=r(T, B, G * H), w_hh=r(G * H, Ho, scale=Ho ** -0.5),
               b_hh=r(G * H, scale=0.3) if bias else None, h0=r(B, Ho),
               c0=r(B, H) if (mode == "LSTM" and c0) else None,
               w_hr=r(Ho, H, scale=H ** -0.5) if P else None)
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    return ins, lens


def run(fn, mode, ins, lens, reverse, seed=1):
    """Outputs and gradients of every input under a loss touching y, h_T and c_T."""
    leaves = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in ins.items()}
    y, h, c = fn(mode, *(leaves[k] for k in NAMES[:5]), lens, reverse, leaves["w_hr"])
    g = torch.Generator().manual_seed(seed)
    loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device)).sum()
               for t in (y, h, c) if t is not None)
    loss.backward()
    outs = dict(y=y, h_T=h, c_T=c)
    outs.update({f"d_{k}": v.grad for k, v in leaves.items() if v is not None})
    return outs


def check(mode, ins, lens, reverse, dtype=torch.float32):
    """Triton with inputs cast to ``dtype`` against the reference on the same values.

    fp32: the reference runs in float64. bf16/fp16: the reference runs on the same rounded
    inputs with its fp32 arithmetic and the same casts at the op boundary (outputs and incoming
    gradients in ``dtype``), so the comparison isolates the kernels, not the dtype's rounding.
    """
    cast = {k: None if v is None else v.to(dtype) for k, v in ins.items()}
    ref_dtype = torch.float64 if dtype == torch.float32 else dtype
    ref = run(recurrence_ref, mode, {k: None if v is None else v.to(ref_dtype) for k, v in cast.items()},
              lens, reverse)
    got = run(tri.recurrence, mode, {k: None if v is None else v.to(DEV) for k, v in cast.items()},
              None if lens is None else lens.to(DEV), reverse)
    assert set(got) == set(ref)
    for k, want in ref.items():
        have = got[k]
        if want is None:
            assert have is None, k
            continue
        assert have.dtype == dtype, (k, have.dtype)
        torch.testing.assert_close(have.cpu().double(), want.double(), **TOL[dtype],
                                   msg=lambda m: f"{k}: {m}")


CASES = {
    "T4B3H5": dict(T=4, B=3, H=5),
    "T1B1H3": dict(T=1, B=1, H=3),
    "T5B3H7-len-unsorted": dict(T=5, B=3, H=7, lengths=[2, 5, 3]),
    "T4B3H5-len-sorted": dict(T=4, B=3, H=5, lengths=[4, 3, 1]),
    "T3B2H4-nobias": dict(T=3, B=2, H=4, bias=False),
}


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("mode", MODES)
def test_parity_fp32(nan_poison, mode, case, reverse):
    ins, lens = make(mode, **CASES[case])
    check(mode, ins, lens, reverse)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("shape", [dict(T=4, B=3, H=5, P=3), dict(T=3, B=2, H=4, P=7, c0=False),
                                   dict(T=5, B=3, H=6, P=5, lengths=[3, 5, 1])],
                         ids=["H5P3", "H4P7-noc0", "H6P5-len"])
def test_parity_lstm_proj(nan_poison, shape, reverse):
    ins, lens = make("LSTM", **shape)
    check("LSTM", ins, lens, reverse)


def test_lstm_without_c0(nan_poison):
    ins, lens = make("LSTM", T=3, B=2, H=5, c0=False)
    check("LSTM", ins, lens, False)


def force_tiles(monkeypatch, units):
    """Make ``tri.recurrence`` plan every layer with tiles of ``units`` units (on chip if the
    tile fits the budget, else streamed)."""
    orig = launch.plan
    monkeypatch.setattr(launch, "plan", lambda *a: orig(*a[:8], units))


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", MODES)
def test_parity_split(nan_poison, monkeypatch, mode, reverse):
    """On-chip split: H=20 pads to 32 and splits into two 16-unit programs per batch block that
    hold their weights; the state goes through global memory every step (per-step launches
    here; a grid barrier on a GPU)."""
    force_tiles(monkeypatch, 16)
    pl = launch.layer_plan(mode, 20, 20, 3, torch.float32, False, DEV)
    assert (pl.n_tiles, pl.BU, pl.stream) == (2, 16, False)
    ins, lens = make(mode, T=4, B=3, H=20, lengths=[4, 1, 3])
    check(mode, ins, lens, reverse)


@pytest.fixture
def streamed(monkeypatch):
    """Every layer takes the streamed path (no tile fits on chip) with 16-wide K-chunks, so the
    tiny test sizes still run several chunks and a ragged last one."""
    monkeypatch.setattr(launch, "TILE_BYTES", 0)
    monkeypatch.setattr(launch, "TILE_BYTES_FP32", 0)
    monkeypatch.setattr(launch, "STREAM_BK", 16)
    return monkeypatch


def split_streamed(monkeypatch):
    """Streamed tiles of 16 units: several programs per batch block exchange every step."""
    monkeypatch.setattr(launch, "STREAM_SOLO_MAX", 16)
    monkeypatch.setattr(launch, "STREAM_BU", 16)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("layout", ["solo", "split"])
@pytest.mark.parametrize("mode", MODES)
def test_parity_stream(nan_poison, streamed, mode, layout, reverse):
    """Streamed weights (K-chunks re-read every step). ``solo``: one program per batch block
    runs the whole sequence in one launch (CTA barrier between steps); ``split``: three
    16-unit programs per batch block, H=37 not a multiple of the tile (per-step launches)."""
    if layout == "split":
        split_streamed(streamed)
    pl = launch.layer_plan(mode, 37, 37, 3, torch.float32, False, DEV)
    assert pl.stream and pl.n_tiles == (1 if layout == "solo" else 3)
    assert pl.path == ("stream" if layout == "solo" else "per_step")
    ins, lens = make(mode, T=3, B=3, H=37, lengths=[3, 1, 2])
    check(mode, ins, lens, reverse)


@pytest.mark.parametrize("layout", ["solo", "split"])
@pytest.mark.parametrize("HP", [(37, 20), (20, 37)], ids=["P<H", "P>H"])
def test_parity_stream_proj(nan_poison, streamed, HP, layout):
    """Projected LSTM on the streamed path. ``split``: the cell output m and dh are exchanged
    mid-step (two launches per step here, two barriers per step on a GPU); P's rows are spread
    over the programs, some of which own no row at all (P<H)."""
    if layout == "split":
        split_streamed(streamed)
    H, P = HP
    pl = launch.layer_plan("LSTM", H, P, 3, torch.float32, True, DEV)
    assert pl.stream and (pl.n_tiles > 1) == (layout == "split")
    ins, lens = make("LSTM", T=3, B=3, H=H, P=P, lengths=[2, 3, 1])
    check("LSTM", ins, lens, False)
    check("LSTM", ins, lens, True)


@pytest.mark.parametrize("path", ["chip-split", "stream-split", "stream-proj-split"])
def test_parity_several_batch_blocks(nan_poison, monkeypatch, path):
    """B=18: two batch blocks of 16 columns (the second mostly masked) on the split paths, whose
    programs index their batch block's exchange buffers and barrier counter."""
    mode, P = ("GRU", None) if path != "stream-proj-split" else ("LSTM", 7)
    if path == "chip-split":
        force_tiles(monkeypatch, 16)
    else:
        monkeypatch.setattr(launch, "TILE_BYTES_FP32", 0)
        split_streamed(monkeypatch)
    lens = [(i % 3) + 1 for i in range(18)]
    ins, lens = make(mode, T=3, B=18, H=20, P=P, lengths=lens)
    check(mode, ins, lens, True)


def test_strided_lengths(nan_poison):
    """A non-contiguous lengths view is read by value, not by its storage."""
    ins, _ = make("LSTM", T=4, B=3, H=5)
    lens = torch.tensor([3, 9, 1, 9, 2, 9])[::2]
    assert not lens.is_contiguous()
    check("LSTM", ins, lens, False)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_parity_stream_half(nan_poison, streamed, mode):
    """bf16 weights streamed in chunks: loaded and cast to fp32 at once, as the on-chip path."""
    split_streamed(streamed)
    ins, lens = make(mode, T=3, B=3, H=37, lengths=[3, 1, 2])
    check(mode, ins, lens, False, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("mode", ["RNN_TANH", "LSTM", "GRU"])
def test_parity_half(nan_poison, mode, dtype):
    """Low-precision inputs: the kernels load and cast to fp32 at once, state stays fp32.

    The reference runs in float64 on the same rounded values, so only output rounding and fp32
    arithmetic separate them. In the interpreter the dot also runs in fp32; the bf16/fp16
    tensor-core dot (h rounded to the input dtype) only runs on a GPU (test_gpu_* below).
    """
    ins, lens = make(mode, T=4, B=3, H=5, lengths=[4, 2, 3])
    check(mode, ins, lens, True, dtype)


def test_empty_sequence():
    ins, _ = make("LSTM", T=0, B=2, H=3)
    got = run(tri.recurrence, "LSTM", {k: v.float().to(DEV) for k, v in ins.items() if v is not None}
              | {"w_hr": None}, None, False)
    ref = run(recurrence_ref, "LSTM", {k: v.float() for k, v in ins.items() if v is not None}
              | {"w_hr": None}, None, False)
    assert got["y"].shape == (0, 2, 3)
    for k in ("h_T", "c_T", "d_h0", "d_c0"):
        torch.testing.assert_close(got[k].cpu(), ref[k], **TOL[torch.float32])


def test_backend_registry_dispatch():
    """fusedrnn.backends.recurrence(backend='triton') reaches this backend with autograd."""
    ins, lens = make("GRU", T=3, B=2, H=4, lengths=[3, 2])
    args = {k: None if v is None else v.float().to(DEV) for k, v in ins.items()}
    y, h, _ = backends.recurrence("GRU", *(args[k] for k in NAMES[:5]), lens, False, None,
                                  backend="triton")
    yr, hr, _ = recurrence_ref("GRU", *(None if ins[k] is None else ins[k] for k in NAMES[:5]), lens)
    torch.testing.assert_close(y.cpu().double(), yr, **TOL[torch.float32])
    torch.testing.assert_close(h.cpu().double(), hr, **TOL[torch.float32])


def test_interface():
    assert tri.unavailable() is None
    assert tri.supports(torch.device("cuda"))
    assert tri.supports(torch.device("cpu")) == launch.interpreting()
    assert not tri.supports(torch.device("meta"))


def test_errors():
    ins, _ = make("LSTM", T=2, B=2, H=5, P=3)
    args = {k: v.to(DEV) for k, v in ins.items()}
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        tri.recurrence("LSTM", *(args[k] for k in NAMES[:5]), None, False, args["w_hr"])
    with pytest.raises(ValueError, match="lengths must be <= T=2"):
        tri.recurrence("LSTM", *(args[k].float() for k in NAMES[:5]),
                       torch.tensor([3, 1]).to(DEV), False, args["w_hr"].float())


def test_plan_paths(monkeypatch):
    """Which sizes take which path on an H100 (documented in docs/triton_backend.md)."""
    monkeypatch.setattr(launch, "interpreting", lambda: False)  # GPU operand sizes
    bf, f32 = torch.bfloat16, torch.float32

    def pl(mode, H, B=16, dtype=bf, P=None, n_sm=132, smem=None):
        p = launch.plan(mode, H, P or H, B, dtype, P is not None, n_sm, smem)
        return p.path, p.BU, p.n_tiles, p.stream

    assert pl("LSTM", 64) == ("resident", 64, 1, False)
    assert pl("RNN_TANH", 128) == ("resident", 128, 1, False)
    assert pl("LSTM", 128) == ("persistent", 32, 4, False)  # 32 KiB of weights per program
    assert pl("LSTM", 32, dtype=f32) == ("stream", 32, 1, True)  # fp32 tiles: hi + lo halves
    assert pl("GRU", 64, dtype=f32) == ("stream", 64, 1, True)
    assert pl("LSTM", 128, dtype=f32) == ("stream", 64, 2, True)
    assert pl("RNN_TANH", 256) == ("stream", 64, 4, True)  # full-K tiles beyond K=128 spill
    # 16-unit tiles: 96 KiB of weights per program (L1-sized); 768 = 48 x 16, no padding to 1024
    assert pl("LSTM", 768) == ("stream", 16, 48, True)
    assert pl("LSTM", 768, B=256) == ("per_step", 64, 12, True)  # even 16 x 12 programs > 132
    assert pl("LSTM", 4096, dtype=f32) == ("stream", 32, 128, True)  # nothing is refused
    assert pl("GRU", 256, n_sm=0)[0] == "per_step"  # no GPU: no grid barrier
    assert pl("LSTM", 768, n_sm=108, smem=166912)[0] == "stream"  # fits an A100 too
    assert pl("LSTM", 64, P=32) == ("resident", 64, 1, False)  # 20 KiB with w_hr
    p = launch.plan("LSTM", 128, 64, 16, bf, True, 132)
    assert (p.path, p.BU, p.n_tiles, p.BO) == ("stream", 64, 2, 32)  # P's rows split as well


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("H", [64, 128, 256, 768])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_parity_sizes(mode, H, dtype):
    """On a GPU: resident, persistent-split and per-step paths at real sizes, tensor-core dots."""
    ins, lens = make(mode, T=16, B=16, H=H, lengths=list(range(16, 0, -1)))
    check(mode, ins, lens, False, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", [("LSTM", 256, 128, 16), ("LSTM", 768, 384, 40),
                                  ("GRU", 768, None, 2200), ("LSTM", 48, 24, 16)],
                         ids=["proj-split", "proj-split-3blocks", "per-step", "proj-small"])
def test_gpu_parity_paths(case, dtype):
    """On a GPU: the projected streamed split (two grid barriers per step), several batch blocks,
    the per-step path of a grid larger than the GPU, and a small projected layer (resident in
    bf16, streamed solo in fp32)."""
    mode, H, P, B = case
    ins, lens = make(mode, T=8, B=B, H=H, P=P, lengths=[(i % 8) + 1 for i in range(B)])
    check(mode, ins, lens, True, dtype)
