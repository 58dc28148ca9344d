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

tri = pytest.importorskip("fusedrnn.ops.triton")
if tri.unavailable() is not None:
    pytest.skip(tri.unavailable(), allow_module_level=True)
from fusedrnn.ops.triton import launch  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if not tri.supports(DEV):
    pytest.skip("no CUDA and TRITON_INTERPRET is not set", allow_module_level=True)
MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
NAMES = ("xw", "w_hh", "b_hh", "h0", "c0", "w_hr")


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


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", MODES)
def test_parity_split(nan_poison, monkeypatch, mode, reverse):
    """H=20 pads to 32 and splits into two 16-unit programs per batch block: the state goes
    through global memory every step (per-step launches here; a grid barrier on a GPU)."""
    monkeypatch.setattr(launch, "TILE_BYTES", 0)
    pl = launch.plan(mode, 20, 20, 3, torch.float32, False, launch.sm_count(DEV))
    assert pl.path in ("per_step", "persistent") and pl.n_tiles == 2 and pl.BU == 16
    ins, lens = make(mode, T=4, B=3, H=20, lengths=[4, 1, 3])
    check(mode, ins, lens, reverse)


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
    big = make("LSTM", T=1, B=1, H=200, P=150)[0]
    with pytest.raises(NotImplementedError, match="w_hr"):
        tri.recurrence("LSTM", *(big[k].float().to(DEV) for k in NAMES[:5]), None, False,
                       big["w_hr"].float().to(DEV))


def test_plan_paths(monkeypatch):
    """Which sizes take which path on a GPU (documented in docs/triton_backend.md)."""
    monkeypatch.setattr(launch, "interpreting", lambda: False)  # GPU operand sizes
    bf, f32 = torch.bfloat16, torch.float32
    assert launch.plan("LSTM", 64, 64, 16, bf, False, 132).path == "resident"
    assert launch.plan("LSTM", 32, 32, 16, f32, False, 132).path == "resident"
    f64 = launch.plan("LSTM", 64, 64, 16, f32, False, 132)  # fp32 tiles are half as large
    assert (f64.path, f64.BU, f64.n_tiles) == ("persistent", 16, 4)
    big = launch.plan("LSTM", 768, 768, 16, bf, False, 132)
    assert (big.path, big.HP, big.BU, big.n_tiles) == ("persistent", 1024, 16, 64)
    assert launch.plan("LSTM", 768, 768, 64, bf, False, 132).path == "per_step"  # 256 programs
    assert launch.plan("LSTM", 2048, 2048, 16, bf, False, 132).path == "per_step"  # tile too big
    assert launch.plan("GRU", 256, 256, 16, bf, False, 0).path == "per_step"  # no GPU: no barrier
    a100 = 166912  # shared memory per block: LSTM H=768 (128 KiB tile + staged state) does not fit
    assert launch.plan("LSTM", 512, 512, 16, bf, False, 108, a100).path == "persistent"
    with pytest.raises(NotImplementedError, match="hidden size too large"):
        launch.plan("LSTM", 768, 768, 16, bf, False, 108, a100)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("H", [64, 256, 768])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_parity_sizes(mode, H, dtype):
    """On a GPU: resident, persistent-split and per-step paths at real sizes, tensor-core dots."""
    ins, lens = make(mode, T=16, B=16, H=H, lengths=list(range(16, 0, -1)))
    check(mode, ins, lens, False, dtype)
