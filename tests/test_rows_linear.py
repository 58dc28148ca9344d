"""fusedrnn::rows_linear, the cpu backend's GEMM for input projections and weight gradients:
against torch in float64, bitwise row/batch and thread-count invariance, gradients, strides."""

from __future__ import annotations

import pytest
import torch

from fusedrnn.ops import cpu

pytestmark = pytest.mark.skipif(cpu.unavailable() is not None, reason="C++ extension not built")

# shapes at register-block and k-chunk edges (chunks of 256 along the reduction)
SHAPES = [(1, 1, 1), (5, 3, 7), (37, 33, 65), (64, 300, 96), (13, 513, 40)]


def _ref(a, w, b):
    y = a.double() @ w.double().t()
    return y if b is None else y + b.double()


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_matmul(M, K, N, bias, dtype):
    g = torch.Generator().manual_seed(M * 1000 + K + N)
    a = torch.randn(M, K, generator=g, dtype=dtype)
    w = torch.randn(N, K, generator=g, dtype=dtype)
    b = torch.randn(N, generator=g, dtype=dtype) if bias else None
    y = cpu.linear(a, w, b)
    tol = 1e-12 if dtype == torch.float64 else 2e-5 * (K ** 0.5)
    torch.testing.assert_close(y.double(), _ref(a, w, b), rtol=tol, atol=tol)


@pytest.mark.parametrize("a_t,w_t", [(False, True), (True, False), (True, True)])
def test_strided_operands(a_t, w_t):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(37, 70, generator=g, dtype=torch.float64)
    w = torch.randn(29, 70, generator=g, dtype=torch.float64)
    a_in = a.t().contiguous().t() if a_t else a  # column-major views of the same values
    w_in = w.t().contiguous().t() if w_t else w
    torch.testing.assert_close(cpu.linear(a_in, w_in), _ref(a, w, None), rtol=1e-12, atol=1e-12)
    # neither row- nor column-major: copied first
    a3 = torch.randn(37, 140, generator=g, dtype=torch.float64)[:, ::2]
    torch.testing.assert_close(cpu.linear(a3, w), _ref(a3, w, None), rtol=1e-12, atol=1e-12)


def test_row_alone_equals_row_in_batch():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(96, 130, generator=g)
    w = torch.randn(200, 130, generator=g)
    b = torch.randn(200, generator=g)
    full = cpu.linear(a, w, b)
    for i in (0, 5, 31, 95):
        assert torch.equal(cpu.linear(a[i:i + 1], w, b), full[i:i + 1]), i
    assert torch.equal(cpu.linear(a[7:40], w, b), full[7:40])


def test_thread_count_invariant():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(300, 64, generator=g, requires_grad=True)
    w = torch.randn(256, 64, generator=g, requires_grad=True)
    b = torch.randn(256, generator=g, requires_grad=True)
    dy = torch.randn(300, 256, generator=g)
    prev = torch.get_num_threads()
    res = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            y = cpu.linear(a, w, b)
            grads = torch.autograd.grad(y, (a, w, b), dy)
            res.append((y, *grads))
    finally:
        torch.set_num_threads(prev)
    for x1, x2 in zip(*res):
        assert torch.equal(x1, x2)


def test_gradients_and_double_backward():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cpu.linear, (a, w, b))
    assert torch.autograd.gradgradcheck(cpu.linear, (a, w, b))


def test_nd_input_and_opcheck():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 5, generator=g)
    w = torch.randn(6, 5, generator=g)
    y = cpu.linear(x, w)
    assert y.shape == (3, 4, 6)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w), rtol=1e-5, atol=1e-5)
    torch.library.opcheck(torch.ops.fusedrnn.rows_linear.default,
                          (x.reshape(12, 5).requires_grad_(), w.requires_grad_(), None))


def test_bad_arguments():
    with pytest.raises(RuntimeError, match="w must have shape"):
        cpu.linear(torch.randn(3, 4), torch.randn(5, 3))
    with pytest.raises(RuntimeError, match="w must have dtype"):
        cpu.linear(torch.randn(3, 4), torch.randn(5, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="b must be"):
        cpu.linear(torch.randn(3, 4), torch.randn(5, 4), torch.randn(4))
