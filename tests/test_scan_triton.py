"""The Triton scan: parity with the reference under TRITON_INTERPRET=1 (tiny shapes, several
chunks and channel blocks), and its ahead-of-time compile for sm_80 / sm_90 (no GPU needed)."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import TOL

from fusedrnn.scan import linear_scan_ref, log_linear_scan_ref

tr = pytest.importorskip("fusedrnn.scan.triton")
WHY = tr.unavailable()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(WHY is not None, reason=f"triton scan: {WHY}")

# (B, T, D, block_t): one chunk; a partial last chunk; many chunks and two channel blocks
# (BLOCK_D = 32, D = 40); T = 1
CASES = [(2, 7, 5, 8), (1, 37, 3, 8), (2, 20, 40, 4), (1, 1, 3, 4)]
IDS = [f"B{b}T{t}D{d}bt{k}" for b, t, d, k in CASES]


def _inputs(B, T, D, log, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = 1 - 0.1 * torch.rand(B, T, D, generator=gen, dtype=torch.float64)
    b = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    h0 = torch.randn(B, D, generator=gen, dtype=torch.float64)
    if log:
        a = a.log()
    return [t.to(dtype) for t in (a, b, h0)]


@needs_triton
@pytest.mark.usefixtures("nan_poison")
@pytest.mark.parametrize("log", [False, True], ids=["linear", "log"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_triton_float64_forward_backward(case, log):
    B, T, D, block_t = case
    a, b, h0 = _inputs(B, T, D, log)
    ref = log_linear_scan_ref if log else linear_scan_ref
    fn = tr.log_linear_scan if log else tr.linear_scan
    # reverse with h0 on the first cases, forward without h0 on the others: both paths covered
    reverse, use_h0 = (True, True) if case[0] == 2 else (False, False)
    x = [t.clone().to(DEVICE).requires_grad_() for t in (a, b, h0)]
    y = [t.clone().requires_grad_() for t in (a, b, h0)]
    out = fn(x[0], x[1], x[2] if use_h0 else None, reverse=reverse, block_t=block_t)
    exp = ref(y[0], y[1], y[2] if use_h0 else None, reverse=reverse)
    torch.testing.assert_close(out.cpu(), exp, **TOL[torch.float64])
    w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (out * w.to(DEVICE)).sum().backward()
    (exp * w).sum().backward()
    for name, p, q in list(zip(("a", "b", "h0"), x, y))[: 3 if use_h0 else 2]:
        torch.testing.assert_close(p.grad.cpu(), q.grad, **TOL[torch.float64], msg=f"d{name}")


@needs_triton
@pytest.mark.usefixtures("nan_poison")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("log", [False, True], ids=["linear", "log"])
def test_triton_low_precision_against_float64(log, dtype):
    a, b, h0 = _inputs(2, 19, 5, log, dtype)
    fn = tr.log_linear_scan if log else tr.linear_scan
    ref = log_linear_scan_ref if log else linear_scan_ref
    out = fn(a.to(DEVICE), b.to(DEVICE), h0.to(DEVICE), reverse=False, block_t=8)
    assert out.dtype == dtype
    exp = ref(a.double(), b.double(), h0.double())  # same rounded inputs, float64 arithmetic
    torch.testing.assert_close(out.cpu().double(), exp.to(dtype).double(), **TOL[dtype])


@needs_triton
def test_triton_gradcheck():
    a, b, h0 = [t.to(DEVICE).requires_grad_() for t in _inputs(1, 5, 2, log=False)]
    assert torch.autograd.gradcheck(
        lambda a, b, h0: tr.linear_scan(a, b, h0, reverse=True, block_t=2), (a, b, h0))


def test_triton_rejects_bad_block_t():
    if WHY is not None:
        pytest.skip(WHY)
    a, b, _ = _inputs(1, 3, 2, log=False)
    with pytest.raises(ValueError, match="block_t must be a power of two >= 2, got 3"):
        tr.linear_scan(a.to(DEVICE), b.to(DEVICE), block_t=3)


def test_triton_aot_compile_sm80_sm90():
    """Every kernel variant compiles for sm_80 and sm_90 without spills (report printed)."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "fusedrnn.scan.aot"], env=env, capture_output=True,
                       text=True, timeout=300)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    ok = [line for line in r.stdout.splitlines() if line.startswith("ok ")]
    assert len(ok) == 2 * 2 * 3 * 2, r.stdout  # targets x kernels x dtypes x (linear, log)
    assert all("spill_stores=0 spill_loads=0" in line for line in ok)


@needs_triton
@pytest.mark.parametrize("log_space", [False, True], ids=["linear", "log"])
def test_mingru_layer_on_triton_matches_reference(log_space):
    """The layer end to end on the Triton scan: bidirectional, lengths, h0, gradients."""
    from fusedrnn import MinGRU

    torch.manual_seed(0)
    mods = [MinGRU(3, 4, bidirectional=True, log_space=log_space, backend=b).double().to(DEVICE)
            for b in ("triton", "reference")]
    mods[1].load_state_dict(mods[0].state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64, device=DEVICE)
    h0 = torch.randn(2, 2, 4, dtype=torch.float64, device=DEVICE)
    grads = []
    for m in mods:
        xi = x.clone().requires_grad_()
        y, h_n = m(xi, h0, lengths=torch.tensor([5, 3]))
        (y.square().sum() + h_n.sum()).backward()
        grads.append([y, h_n, xi.grad] + [p.grad for p in m.parameters()])
    for t, r in zip(*grads):
        torch.testing.assert_close(t, r, **TOL[torch.float64])
