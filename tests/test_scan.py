"""fusedrnn.linear_scan / log_linear_scan: the reference anchored to closed forms, the C++ backend
against the reference (float64 tight, float32, bf16), gradients, registration, errors.

The Triton backend has its own file (tests/test_scan_triton.py): the interpreter is slow.
"""

import pytest
import torch
from conftest import TOL

import fusedrnn
from fusedrnn.scan import cpu as scan_cpu
from fusedrnn.scan import linear_scan_ref, log_linear_scan_ref

CPU_MISSING = scan_cpu.unavailable()
needs_cpu = pytest.mark.skipif(CPU_MISSING is not None, reason=f"cpu scan: {CPU_MISSING}")

# (B, T, D): T=1, odd T, D across the 16-channel blocks of the C++ kernel, and B=1 with
# B*T*D >= 2**17 so that the C++ kernel cuts time into chunks (one task cannot feed the threads)
SHAPES = [(2, 1, 3), (3, 63, 5), (2, 63, 40), (1, 1000, 3), (1, 1025, 131)]
IDS = [f"B{b}T{t}D{d}" for b, t, d in SHAPES]


def _inputs(shape, dtype=torch.float64, log=False, h0=True, seed=0):
    """a close to 1 (so the state carries across many steps and across time chunks), b, h0."""
    gen = torch.Generator().manual_seed(seed)
    B, T, D = shape
    a = 1 - 0.05 * torch.rand(shape, generator=gen, dtype=torch.float64)
    b = torch.randn(shape, generator=gen, dtype=torch.float64)
    h = torch.randn(B, D, generator=gen, dtype=torch.float64) if h0 else None
    if log:
        a = a.log()
    return [None if t is None else t.to(dtype) for t in (a, b, h)]


def _closed_form(a, b, h0, reverse):
    """h_t = sum_{s<=t} (prod_{s<r<=t} a_r) b_s + (prod_{r<=t} a_r) h0, by direct products."""
    if reverse:
        h = _closed_form(a.flip(1), b.flip(1), h0, False)
        return h.flip(1)
    B, T, D = a.shape
    h0 = torch.zeros(B, D, dtype=a.dtype) if h0 is None else h0
    out = torch.empty_like(a)
    for t in range(T):
        acc = a[:, : t + 1].prod(1) * h0
        for s in range(t + 1):
            acc = acc + a[:, s + 1: t + 1].prod(1) * b[:, s]
        out[:, t] = acc
    return out


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("has_h0", [False, True], ids=["h0none", "h0"])
def test_reference_matches_closed_form(reverse, has_h0):
    a, b, h0 = _inputs((2, 9, 3), h0=has_h0)
    torch.testing.assert_close(linear_scan_ref(a, b, h0, reverse), _closed_form(a, b, h0, reverse),
                               **TOL[torch.float64])


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_log_reference_matches_heinsen(reverse):
    """log h = a* + logcumsumexp(log_b - a*), a* = cumsum(log_a) (Heinsen 2023), h0 = 0."""
    la, _, _ = _inputs((2, 30, 4), log=True, h0=False)
    lb = torch.randn(2, 30, 4, dtype=torch.float64)
    f = (lambda t: t.flip(1)) if reverse else (lambda t: t)
    a_star = f(la).cumsum(1)
    heinsen = f(a_star + torch.logcumsumexp(f(lb) - a_star, dim=1))
    torch.testing.assert_close(log_linear_scan_ref(la, lb, None, reverse), heinsen,
                               **TOL[torch.float64])


@needs_cpu
@pytest.mark.parametrize("log", [False, True], ids=["linear", "log"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("has_h0", [False, True], ids=["h0none", "h0"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_cpu_float64_forward_backward(shape, has_h0, reverse, log):
    a, b, h0 = _inputs(shape, log=log, h0=has_h0)
    fn = "log_linear_scan" if log else "linear_scan"
    ref = fusedrnn.scan.log_linear_scan_ref if log else fusedrnn.scan.linear_scan_ref
    leaves = [t for t in (a, b, h0) if t is not None]
    x = [t.clone().requires_grad_() for t in leaves]
    y = [t.clone().requires_grad_() for t in leaves]
    args = lambda v: (v[0], v[1], v[2] if has_h0 else None)  # noqa: E731
    out = getattr(fusedrnn.scan, fn)(*args(x), reverse=reverse, backend="cpu")
    exp = ref(*args(y), reverse=reverse)
    torch.testing.assert_close(out, exp, **TOL[torch.float64])
    w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (out * w).sum().backward()
    (exp * w).sum().backward()
    for name, p, q in zip(("a", "b", "h0"), x, y):
        torch.testing.assert_close(p.grad, q.grad, **TOL[torch.float64], msg=f"d{name}")


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("log", [False, True], ids=["linear", "log"])
@pytest.mark.parametrize("shape", [(3, 63, 5), (1, 1000, 3)], ids=["B3T63D5", "B1T1000D3"])
def test_cpu_low_precision_against_float64(shape, log, dtype):
    a, b, h0 = _inputs(shape, log=log)
    fn = fusedrnn.log_linear_scan if log else fusedrnn.linear_scan
    ref = log_linear_scan_ref if log else linear_scan_ref
    out = fn(a.to(dtype), b.to(dtype), h0.to(dtype), reverse=True, backend="cpu")
    assert out.dtype == dtype
    # the reference on the same rounded inputs, in float64: only the scan's own error remains
    exp = ref(a.to(dtype).double(), b.to(dtype).double(), h0.to(dtype).double(), reverse=True)
    torch.testing.assert_close(out.double(), exp.to(dtype).double(), **TOL[dtype])


@needs_cpu
@pytest.mark.parametrize("log", [False, True], ids=["linear", "log"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_cpu_gradcheck(reverse, log):
    a, b, h0 = [t.requires_grad_() for t in _inputs((2, 7, 3), log=log)]
    fn = fusedrnn.log_linear_scan if log else fusedrnn.linear_scan
    assert torch.autograd.gradcheck(lambda a, b, h0: fn(a, b, h0, reverse=reverse, backend="cpu"),
                                    (a, b, h0))
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, None, reverse=reverse, backend="cpu"),
                                    (a, b))


@needs_cpu
@pytest.mark.parametrize("log", [False, True], ids=["linear", "log"])
def test_cpu_opcheck(log):
    a, b, h0 = [t.float().requires_grad_() for t in _inputs((2, 5, 3), log=log)]
    torch.library.opcheck(torch.ops.fusedrnn.scan_fwd.default, (a, b, h0, False, log))
    torch.library.opcheck(torch.ops.fusedrnn.scan_fwd.default, (a, b, None, True, log))


@needs_cpu
def test_cpu_traces_without_graph_break():
    a, b, h0 = [t.float() for t in _inputs((2, 5, 3))]
    fn = torch.compile(lambda a, b, h0: fusedrnn.linear_scan(a, b, h0, backend="cpu") * 2,
                       backend="eager", fullgraph=True)
    torch.testing.assert_close(fn(a, b, h0), linear_scan_ref(a, b, h0) * 2, **TOL[torch.float32])


@needs_cpu
def test_cpu_noncontiguous_inputs():
    a, b, h0 = _inputs((3, 20, 6))
    at, bt = a.transpose(0, 1).contiguous().transpose(0, 1), b[:, :, ::1]  # [B, T, D] views
    torch.testing.assert_close(fusedrnn.linear_scan(at, bt, h0, backend="cpu"),
                               linear_scan_ref(a, b, h0), **TOL[torch.float64])


def test_log_scan_is_log_of_linear_scan():
    a, b, h0 = _inputs((2, 40, 3))
    b, h0 = b.abs() + 0.1, h0.abs() + 0.1
    torch.testing.assert_close(fusedrnn.log_linear_scan(a.log(), b.log(), h0.log()).exp(),
                               fusedrnn.linear_scan(a, b, h0), **TOL[torch.float64])


def test_auto_uses_cpu_backend_when_built():
    a, b, h0 = _inputs((1, 3, 2))
    mod = fusedrnn.scan.resolve("auto", a.device)
    assert mod.__name__ == ("fusedrnn.scan.cpu" if CPU_MISSING is None else "fusedrnn.scan.reference")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(a=torch.rand(2, 3), b=torch.rand(2, 3)), r"a must be 3-D \[B, T, D\].*got shape \(2, 3\)"),
        (dict(a=torch.rand(2, 3, 4), b=torch.rand(2, 3, 5)), r"b must have the shape of a \(2, 3, 4\), got \(2, 3, 5\)"),
        (dict(a=torch.rand(2, 3, 4), b=torch.rand(2, 3, 4).double()), r"b must have dtype torch.float32.*got torch.float64"),
        (dict(a=torch.rand(2, 3, 4), b=torch.rand(2, 3, 4), h0=torch.rand(3, 4)), r"h0 must have shape \(2, 4\) \[B, D\], got \(3, 4\)"),
        (dict(a=torch.rand(2, 3, 4), b=torch.rand(2, 3, 4), backend="gpu"), r"backend must be one of .*got 'gpu'"),
    ],
    ids=["a2d", "bshape", "bdtype", "h0shape", "backend"],
)
def test_errors_name_argument_expected_and_got(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fusedrnn.linear_scan(**kwargs)


def test_reverse_must_be_bool():
    with pytest.raises(TypeError, match="reverse must be a bool, got int"):
        fusedrnn.linear_scan(torch.rand(1, 2, 3), torch.rand(1, 2, 3), reverse=1)


@pytest.mark.parametrize("backend", ["reference"] + (["cpu"] if CPU_MISSING is None else []))
def test_log_scan_zero_state_meeting_zero_input_has_zero_gradient(backend):
    """Padded steps run first in a reversed sequence: h = 0 and b = 0 there (both -inf in log
    space); the gradient must be 0 there, not NaN, and flow normally through the real steps."""
    la, lb, _ = _inputs((2, 6, 3), log=True)
    lb = lb.clone()
    lb[0, 3:] = float("-inf")  # sequence 0 has length 3
    la, lb = la.requires_grad_(), lb.requires_grad_()
    out = fusedrnn.log_linear_scan(la, lb, None, reverse=True, backend=backend)
    assert torch.isinf(out[0, 3:]).all() and torch.isfinite(out[0, :3]).all()
    out[:, :3].sum().backward()
    assert torch.isfinite(la.grad).all() and torch.isfinite(lb.grad).all()
    assert (lb.grad[0, 3:] == 0).all() and (la.grad[0, 3:] == 0).all()
