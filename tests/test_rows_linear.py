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


def _on_1_and_2_threads(fn):
    """fn() with torch on one thread, then on two."""
    prev = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append(fn())
        return out
    finally:
        torch.set_num_threads(prev)


def test_thread_count_invariant():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(300, 64, generator=g, requires_grad=True)
    w = torch.randn(256, 64, generator=g, requires_grad=True)
    b = torch.randn(256, generator=g, requires_grad=True)
    dy = torch.randn(300, 256, generator=g)

    def run():
        y = cpu.linear(a, w, b)
        return (y, *torch.autograd.grad(y, (a, w, b), dy))

    for x1, x2 in zip(*_on_1_and_2_threads(run)):
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


# -- rows_linear_at: the same GEMM over chosen rows (a packed batch's projection) ----------------

def _at_ref(a, w, b, src, dst, out_rows):
    n = len(src) if src is not None else len(dst) if dst is not None else a.shape[0]
    rows = _ref(a if src is None else a[src], w, b)
    out = torch.zeros(out_rows if dst is not None else n, w.shape[0], dtype=torch.float64)
    out[torch.arange(n) if dst is None else dst] = rows
    return out


def _indices(g, M, n, out_rows):
    """Random distinct src rows of [0, M) and dst rows of [0, out_rows), with runs of
    consecutive rows in both (as a packed batch has) and isolated rows."""
    src = torch.sort(torch.randperm(M, generator=g)[:n]).values
    dst = torch.sort(torch.randperm(out_rows, generator=g)[:n]).values
    return src, dst


@pytest.mark.parametrize("M,K,N", SHAPES[1:])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("which", ["both", "src", "dst", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_at_matches_indexed_matmul(M, K, N, bias, which, dtype):
    g = torch.Generator().manual_seed(M + 7 * K + N)
    a = torch.randn(M, K, generator=g, dtype=dtype)
    w = torch.randn(N, K, generator=g, dtype=dtype)
    b = torch.randn(N, generator=g, dtype=dtype) if bias else None
    n = max(1, M // 2) if which in ("both", "src") else M
    out_rows = M + 3
    src, dst = _indices(g, M, n, out_rows)
    src = src if which in ("both", "src") else None
    dst = dst if which in ("both", "dst") else None
    y = cpu.linear_at(a, w, b, src, dst, out_rows if dst is not None else -1)
    tol = 1e-12 if dtype == torch.float64 else 2e-5 * (K ** 0.5)
    torch.testing.assert_close(y.double(), _at_ref(a, w, b, src, dst, out_rows), rtol=tol, atol=tol)


def test_at_rows_bitwise_equal_rows_linear():
    """Each computed row is bitwise rows_linear's row (runs cut anywhere), and the rows no index
    names are exact zeros."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(50, 33, generator=g)
    w = torch.randn(70, 33, generator=g)
    b = torch.randn(70, generator=g)
    src, dst = _indices(g, 50, 31, 90)
    y = cpu.linear_at(a, w, b, src, dst, 90)
    full = cpu.linear(a, w, b)
    assert torch.equal(y[dst], full[src])
    others = torch.ones(90, dtype=torch.bool)
    others[dst] = False
    assert torch.equal(y[others], torch.zeros(int(others.sum()), 70))


def test_at_thread_count_invariant():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(300, 64, generator=g)
    w = torch.randn(256, 64, generator=g)
    src, dst = _indices(g, 300, 200, 400)
    one, two = _on_1_and_2_threads(lambda: cpu.linear_at(a, w, None, src, dst, 400))
    assert torch.equal(one, two)


def test_at_gradients_and_opcheck():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(12, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    src, dst = torch.tensor([4, 5, 6, 0, 11]), torch.tensor([9, 10, 11, 2, 0])
    for s, d, rows in ((src, dst, 14), (None, torch.arange(12) + 1, 14), (src, None, -1)):
        f = lambda a, w, b: cpu.linear_at(a, w, b, s, d, rows)  # noqa: E731
        assert torch.autograd.gradcheck(f, (a, w, b))
        assert torch.autograd.gradgradcheck(f, (a, w, b))
        torch.library.opcheck(torch.ops.fusedrnn.rows_linear_at.default, (a, w, b, s, d, rows))


@pytest.mark.parametrize("args,match", [
    (lambda a, w: (a, w, None, torch.tensor([8]), None, -1), "src\\[0\\] = 8 is out of range"),
    (lambda a, w: (a, w, None, torch.tensor([0, 1]), torch.tensor([3, 3]), 5), "row 3 twice"),
    (lambda a, w: (a, w, None, torch.tensor([0, 1]), torch.tensor([0, 5]), 5), "out of range"),
    (lambda a, w: (a, w, None, torch.tensor([0, 1]), torch.tensor([0]), 5), "same length"),
    (lambda a, w: (a, w, None, torch.tensor([0.0]), None, -1), "1-D int64"),
    (lambda a, w: (a, w, None, None, None, 3), "out_rows"),
    (lambda a, w: (a, w[:, :2], None, None, None, -1), "w must have shape"),
])
def test_at_bad_arguments(args, match):
    a, w = torch.randn(8, 3), torch.randn(4, 3)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fusedrnn.rows_linear_at(*args(a, w))


# -- move_rows: whole-row gathers and scatters (a packed batch's output and gradients) ---------

@pytest.mark.parametrize("which", ["both", "src", "dst"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64])
def test_move_rows_matches_indexing(which, dtype):
    g = torch.Generator().manual_seed(6)
    a = (torch.randn(40, 7, generator=g) * 100).to(dtype)
    src, dst = _indices(g, 40, 40 if which == "dst" else 23, 57)
    src = src if which in ("both", "src") else None
    dst = dst if which in ("both", "dst") else None
    rows = 57 if dst is not None else -1
    ref = torch.zeros(57 if dst is not None else len(src), 7, dtype=dtype)
    ref[torch.arange(len(ref)) if dst is None else dst] = a if src is None else a[src]
    assert torch.equal(cpu.move_rows(a, src, dst, rows), ref)


def test_move_rows_gradients_and_opcheck():
    a = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    src, dst = torch.tensor([2, 3, 4, 9]), torch.tensor([5, 6, 7, 0])
    for s, d, rows in ((src, dst, 8), (src, None, -1), (None, torch.arange(10) + 2, 13)):
        f = lambda a: cpu.move_rows(a, s, d, rows)  # noqa: E731
        assert torch.autograd.gradcheck(f, (a,))
        assert torch.autograd.gradgradcheck(f, (a,))
        torch.library.opcheck(torch.ops.fusedrnn.move_rows.default, (a, s, d, rows))


def test_move_rows_bad_arguments():
    a = torch.randn(8, 3)
    with pytest.raises(RuntimeError, match="move_rows: src\\[0\\] = 8 is out of range"):
        cpu.move_rows(a, torch.tensor([8]), None, -1)
    with pytest.raises(RuntimeError, match="move_rows: dst holds row 2 twice"):
        cpu.move_rows(a, torch.tensor([0, 1]), torch.tensor([2, 2]), 4)
    with pytest.raises(RuntimeError, match="must be 2-D"):
        cpu.move_rows(torch.randn(8), None, None, -1)
