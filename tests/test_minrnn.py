"""MinGRU / MinLSTM: anchored to a literal per-step loop of the paper's equations (float64), then
log-space vs linear space, streaming ``step`` vs ``forward``, lengths and PackedSequence,
gradients across scan backends, API and errors."""

import pytest
import torch
from conftest import TOL
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import MinGRU, MinLSTM
from fusedrnn.scan import available_scan_backends

F64 = TOL[torch.float64]
CELLS = [MinGRU, MinLSTM]
CPU_BACKENDS = [b for b in ("reference", "cpu") if b in available_scan_backends()]


def _g(x):
    return x + 0.5 if x >= 0 else 1 / (1 + torch.exp(-x))


def _paper_layer(cell, x, w, bias, h, reverse):
    """The paper's per-step equations, one channel at a time; x [B, T, I], h [B, H]."""
    B, T, _ = x.shape
    H = h.shape[1]
    out = torch.zeros(B, T, H, dtype=x.dtype)
    h = h.clone()
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        k = x[:, t] @ w.T + bias  # [B, G*H]
        for bi in range(B):
            for j in range(H):
                h_tilde = _g(k[bi, -H + j])
                if cell is MinGRU:
                    z = torch.sigmoid(k[bi, j])
                    h[bi, j] = (1 - z) * h[bi, j] + z * h_tilde
                else:
                    f, i = torch.sigmoid(k[bi, j]), torch.sigmoid(k[bi, H + j])
                    h[bi, j] = f / (f + i) * h[bi, j] + i / (f + i) * h_tilde
        out[:, t] = h
    return out, h


@pytest.mark.parametrize("log_space", [False, True], ids=["linear", "log"])
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_matches_paper_equations(cell, log_space):
    torch.manual_seed(0)
    m = cell(4, 3, num_layers=2, bidirectional=True, log_space=log_space).double()
    x = torch.randn(5, 2, 4, dtype=torch.float64)  # [T, B, I]
    h0 = torch.randn(4, 2, 3, dtype=torch.float64)
    y, h_n = m(x, h0)
    inp, hs = x.transpose(0, 1), []
    for layer in range(2):
        outs = []
        for d in range(2):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            o, hT = _paper_layer(cell, inp, getattr(m, "weight_ih" + sfx),
                                 getattr(m, "bias_ih" + sfx), h0[2 * layer + d], bool(d))
            outs.append(o)
            hs.append(hT)
        inp = torch.cat(outs, -1)
    torch.testing.assert_close(y, inp.transpose(0, 1), **F64)
    torch.testing.assert_close(h_n, torch.stack(hs), **F64)


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_log_space_equals_linear_space_and_float32(cell):
    torch.manual_seed(1)
    lin = cell(6, 5, num_layers=2, batch_first=True).double()
    log = cell(6, 5, num_layers=2, batch_first=True, log_space=True).double()
    log.load_state_dict(lin.state_dict())
    x, h0 = torch.randn(3, 63, 6, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    y, h = lin(x, h0)
    y2, h2 = log(x, h0)
    torch.testing.assert_close(y2, y, **F64)
    torch.testing.assert_close(h2, h, **F64)
    y32, h32 = lin.float()(x.float(), h0.float())
    torch.testing.assert_close(y32.double(), y, **TOL[torch.float32])
    torch.testing.assert_close(h32.double(), h, **TOL[torch.float32])


@pytest.mark.parametrize("log_space", [False, True], ids=["linear", "log"])
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_step_T_times_equals_forward(cell, log_space):
    torch.manual_seed(2)
    m = cell(4, 6, num_layers=3, log_space=log_space).double()
    x, h0 = torch.randn(17, 2, 4, dtype=torch.float64), torch.randn(3, 2, 6, dtype=torch.float64)
    y, h_n = m(x, h0)
    h, ys = h0, []
    for t in range(x.shape[0]):
        y_t, h = m.step(x[t], h)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys), y, **F64)
    torch.testing.assert_close(h, h_n, **F64)
    y_t, h1 = m.step(x[0, 0])  # unbatched, h = None means zeros
    torch.testing.assert_close(y_t, m(x[:1, :1])[0][0, 0], **F64)
    assert h1.shape == (3, 6)


@pytest.mark.parametrize("log_space", [False, True], ids=["linear", "log"])
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_lengths_each_sequence_as_if_run_alone(cell, log_space):
    torch.manual_seed(3)
    m = cell(3, 4, num_layers=2, bidirectional=True, batch_first=True, log_space=log_space).double()
    T, lengths = 9, torch.tensor([9, 1, 5, 0])
    x, h0 = torch.randn(4, T, 3, dtype=torch.float64), torch.randn(4, 4, 4, dtype=torch.float64)
    y, h_n = m(x, h0, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        if n == 0:  # nothing ran: the state is h0, every output zero
            torch.testing.assert_close(h_n[:, b], h0[:, b], rtol=0, atol=0)
        else:
            yb, hb = m(x[b: b + 1, :n], h0[:, b: b + 1])
            torch.testing.assert_close(y[b: b + 1, :n], yb, **F64)
            torch.testing.assert_close(h_n[:, b: b + 1], hb, **F64)
        assert torch.equal(y[b, n:], torch.zeros_like(y[b, n:]))


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_packed_sequence_equals_lengths(cell):
    torch.manual_seed(4)
    m = cell(3, 4, bidirectional=True).double()
    lengths = torch.tensor([3, 7, 5])
    x, h0 = torch.randn(7, 3, 3, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    yp, hp = m(packed, h0)
    assert torch.equal(yp.sorted_indices, packed.sorted_indices)
    y, h = m(x, h0, lengths=lengths)
    torch.testing.assert_close(pad_packed_sequence(yp, total_length=7)[0], y, **F64)
    torch.testing.assert_close(hp, h, **F64)


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="the cpu scan backend is not built")
@pytest.mark.parametrize("log_space", [False, True], ids=["linear", "log"])
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_gradients_cpu_backend_match_reference(cell, log_space):
    torch.manual_seed(5)
    mods = [cell(3, 4, num_layers=2, bidirectional=True, log_space=log_space, backend=b).double()
            for b in ("cpu", "reference")]
    mods[1].load_state_dict(mods[0].state_dict())
    x, h0 = torch.randn(6, 2, 3, dtype=torch.float64), torch.randn(4, 2, 4, dtype=torch.float64)
    grads = []
    for m in mods:
        xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_()
        y, h_n = m(xi, hi, lengths=torch.tensor([6, 4]))
        (y.square().sum() + h_n.sum()).backward()  # h_n in the loss: dh0 gets exercised
        grads.append([xi.grad, hi.grad] + [p.grad for p in m.parameters()])
    for gc, gr in zip(*grads):
        torch.testing.assert_close(gc, gr, **F64)


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_log_space_gradients_equal_linear_space(cell):
    """Two independent derivative paths (log_g/logsigmoid/log scan vs g/sigmoid/linear scan)."""
    torch.manual_seed(8)
    lin = cell(3, 4, num_layers=2, bidirectional=True).double()
    log = cell(3, 4, num_layers=2, bidirectional=True, log_space=True).double()
    log.load_state_dict(lin.state_dict())
    x = 2 * torch.randn(7, 3, 3, dtype=torch.float64)  # wide spread: both branches of g
    h0 = torch.randn(4, 3, 4, dtype=torch.float64)
    grads = []
    for m in (lin, log):
        xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_()
        y, h_n = m(xi, hi, lengths=torch.tensor([7, 2, 5]))
        (y.square().sum() + h_n.sum()).backward()
        grads.append([xi.grad, hi.grad] + [p.grad for p in m.parameters()])
    for gl, gg in zip(*grads):
        assert torch.isfinite(gg).all()
        torch.testing.assert_close(gg, gl, **F64)


def test_gradcheck_layer():
    torch.manual_seed(6)
    m = MinLSTM(2, 3, bidirectional=True).double()
    x, h0 = torch.randn(4, 2, 2, dtype=torch.float64), torch.randn(2, 2, 3, dtype=torch.float64)
    fn = lambda x, h0: torch.cat([t.flatten() for t in m(x, h0, lengths=torch.tensor([4, 2]))])  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), h0.requires_grad_()))


def test_constructor_compatible_with_gru_and_state_dict_names():
    m = MinGRU(10, 20, 2, True, False, 0.0, True)  # torch.nn.GRU's positional order
    names = [n for n, _ in m.named_parameters()]
    assert names == ["weight_ih_l0", "bias_ih_l0", "weight_ih_l0_reverse", "bias_ih_l0_reverse",
                     "weight_ih_l1", "bias_ih_l1", "weight_ih_l1_reverse", "bias_ih_l1_reverse"]
    assert m.weight_ih_l1.shape == (40, 40) and MinLSTM(10, 20).weight_ih_l0.shape == (60, 10)
    assert [n for n, _ in MinGRU(3, 4, bias=False).named_parameters()] == ["weight_ih_l0"]
    y, h = m(torch.randn(5, 3, 10))
    assert y.shape == (5, 3, 40) and h.shape == (4, 3, 20)
    y, h = MinGRU(10, 20)(torch.randn(5, 10))  # unbatched
    assert y.shape == (5, 20) and h.shape == (1, 20)


def test_dropout_only_between_layers():
    torch.manual_seed(7)
    x = torch.randn(6, 2, 3)
    one = MinGRU(3, 4, dropout=0.5).train()
    torch.testing.assert_close(one(x)[0], one.eval()(x)[0], rtol=0, atol=0)
    two = MinGRU(3, 4, num_layers=2, dropout=0.5).train()
    assert not torch.equal(two(x)[0], two.eval()(x)[0])


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda m: m(torch.randn(5, 2, 7)), ValueError, "input.size\\(-1\\) must be equal to input_size. Expected 3, got 7"),
        (lambda m: m(torch.randn(5, 2, 3), torch.randn(1, 2, 4)), ValueError, r"Expected hidden size \(2, 2, 4\), got \[1, 2, 4\]"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=torch.tensor([6, 1])), ValueError, r"lengths must lie in \[0, 5\].*got min 1, max 6"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=torch.tensor([5.0, 1.0])), ValueError, r"lengths must be an integer tensor of shape \(2,\), got torch.float32"),
        (lambda m: m.step(torch.randn(2, 3)), ValueError, "step\\(\\) needs a unidirectional layer"),
        (lambda m: MinGRU(3, 4, dropout=2.0), ValueError, "dropout must be a number in \\[0, 1\\], got 2.0"),
        (lambda m: MinGRU(3, 0), ValueError, "hidden_size must be a positive int, got 0"),
        (lambda m: MinGRU(3, 4, backend="cuda"), ValueError, "backend must be one of .*got 'cuda'"),
    ],
    ids=["input_size", "h0", "lengths_range", "lengths_dtype", "step_bidir", "dropout", "hidden", "backend"],
)
def test_errors_name_argument_expected_and_got(call, exc, match):
    m = MinGRU(3, 4, bidirectional=True)
    with pytest.raises(exc, match=match):
        call(m)


def test_repr_and_package_exports():
    assert repr(MinLSTM(3, 4, num_layers=2, log_space=True)) == \
        "MinLSTM(3, 4, num_layers=2, log_space=True)"
    assert fusedrnn.MinGRU is MinGRU and callable(fusedrnn.linear_scan)


# -- the fused C++ minGRU/minLSTM pass (csrc/cpu/minrnn_scan.cpp) vs the unfused reference path

def _fused_built():
    from fusedrnn.scan import cpu
    return "cpu" in CPU_BACKENDS and cpu.minrnn_available()


def _run_grads(m, x, h0, lengths):
    xi = x.clone().requires_grad_()
    hi = None if h0 is None else h0.clone().requires_grad_()
    y, h_n = m(xi, hi, lengths=lengths)
    # weights that differ per element, so a gradient sent to the wrong step or channel shows
    wy = torch.linspace(-1, 2, y.numel(), dtype=y.dtype).reshape(y.shape)
    (y * wy).sum().backward(retain_graph=True)
    h_n.square().sum().backward()
    return [y, h_n, xi.grad] + ([] if hi is None else [hi.grad]) + [p.grad for p in m.parameters()]


@pytest.mark.skipif(not _fused_built(), reason="the fused minGRU C++ ops are not built")
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("H,lengths,with_h0", [(5, None, True), (37, [9, 0, 4], True),
                                               (37, None, False), (16, [1, 9, 9], False)])
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_fused_matches_unfused_reference(cell, batch_first, H, lengths, with_h0):
    """float64: outputs and every gradient equal the reference backend's unfused layer, with H
    crossing the 16-channel blocks, lengths of 0 and T, both layouts, h0 given and absent."""
    torch.manual_seed(11)
    fused = cell(4, H, num_layers=2, bidirectional=True, batch_first=batch_first).double()
    ref = cell(4, H, num_layers=2, bidirectional=True, batch_first=batch_first,
                 backend="reference").double()
    ref.load_state_dict(fused.state_dict())
    x = 3 * torch.randn(3, 9, 4, dtype=torch.float64)  # wide: both branches of g, saturated z
    x = x if batch_first else x.transpose(0, 1).contiguous()
    h0 = torch.randn(4, 3, H, dtype=torch.float64) if with_h0 else None
    lengths = None if lengths is None else torch.tensor(lengths)
    assert fused._fused(x) and not ref._fused(x)  # the two paths really differ
    for got, want in zip(_run_grads(fused, x, h0, lengths), _run_grads(ref, x, h0, lengths)):
        torch.testing.assert_close(got, want, **F64)


@pytest.mark.skipif(not _fused_built(), reason="the fused minGRU C++ ops are not built")
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_fused_float32_against_float64(cell):
    """float32 on the vectorised kernel (its own exp) against the float64 reference, with gate
    inputs from -60 to 60 so that every sigmoid saturates somewhere."""
    torch.manual_seed(12)
    m = cell(6, 40, bidirectional=True)
    ref = cell(6, 40, bidirectional=True, backend="reference").double()
    ref.load_state_dict(m.state_dict())
    x = (torch.randn(50, 4, 6) * torch.logspace(-2, 1, 6)).float()
    h0 = torch.randn(2, 4, 40)
    got = _run_grads(m, x, h0, torch.tensor([50, 31, 1, 0]))
    want = _run_grads(ref, x.double(), h0.double(), torch.tensor([50, 31, 1, 0]))
    for gv, wv in zip(got, want):
        assert torch.isfinite(gv).all()
        torch.testing.assert_close(gv.double(), wv, **TOL[torch.float32])


@pytest.mark.skipif(not _fused_built(), reason="the fused minGRU C++ ops are not built")
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_fused_same_bits_on_1_and_2_threads(cell):
    torch.manual_seed(13)
    m = cell(5, 37, bidirectional=True)
    x, h0 = torch.randn(20, 6, 5), torch.randn(2, 6, 37)
    old = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            m.zero_grad()
            runs.append(_run_grads(m, x, h0, torch.tensor([20, 3, 0, 20, 7, 1])))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.skipif(not _fused_built(), reason="the fused minGRU C++ ops are not built")
@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("cell", [0, 1], ids=["MinGRU", "MinLSTM"])
def test_fused_opcheck(time_major, cell):
    torch.manual_seed(14)
    p = 3 * torch.randn(3, 7, (cell + 2) * 20, dtype=torch.float64)
    p.requires_grad_()
    h0 = torch.randn(7 if time_major else 3, 20, dtype=torch.float64, requires_grad=True)
    n = 7 if time_major else 3
    lengths = torch.randint(0, (3 if time_major else 7) + 1, (n,))
    bias = torch.randn((cell + 2) * 20, dtype=torch.float64, requires_grad=True)
    op = torch.ops.fusedrnn.minrnn_fwd.default
    torch.library.opcheck(op, (p, bias, h0, lengths, True, time_major, cell))
    torch.library.opcheck(op, (p, None, None, None, False, time_major, cell))
    fn = lambda p, bias, h0: op(p, bias, h0, lengths, True, time_major, cell)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (p, bias, h0))
    # h_n alone in the loss: the kernel gets no grad_h
    assert torch.autograd.gradcheck(lambda p: op(p, bias, h0, lengths, True, time_major, cell)[1], (p,))


@pytest.mark.skipif(not _fused_built(), reason="the fused minGRU C++ ops are not built")
@pytest.mark.parametrize("loss", ["sum", "h_n_only", "transposed"])
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_fused_gradient_layouts(cell, loss):
    """grad_h broadcast (y.sum()), absent (only h_n in the loss) or strided (a transposed view):
    the kernel reads each in place; gradients equal the unfused reference's."""
    torch.manual_seed(15)
    fused = cell(3, 21, bidirectional=True).double()
    ref = cell(3, 21, bidirectional=True, backend="reference").double()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(8, 5, 3, dtype=torch.float64)
    w = torch.randn(42, 5, 8, dtype=torch.float64).permute(2, 1, 0)  # [T, B, 2H], T innermost
    grads = []
    for m in (fused, ref):
        xi = x.clone().requires_grad_()
        y, h_n = m(xi)
        if loss == "sum":
            out = y.sum() + h_n.sum()
        elif loss == "h_n_only":
            out = h_n.square().sum()
        else:  # a gradient with T innermost reaches the kernel as a strided tensor
            out = (y * w).sum()
        out.backward()
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, **F64)


@pytest.mark.skipif(not _fused_built(), reason="the fused minGRU C++ ops are not built")
@pytest.mark.parametrize("cell", [0, 1], ids=["MinGRU", "MinLSTM"])
def test_fused_kernel_extreme_gates_float32(cell):
    """Gate inputs up to +-200: sigmoids saturate, minLSTM's f and i both underflow (its 0/0 case
    without the shift by m). float32 (vectorised exp) against the float64 kernel (std::exp):
    finite, and equal to float32 tolerance, outputs and gradients."""
    torch.manual_seed(16)
    p = 200 * torch.rand(6, 4, (cell + 2) * 17, dtype=torch.float64) - 100
    p[:, :, : 2 * 17] -= 100  # f and i (z) far negative somewhere
    h0 = torch.randn(4, 17, dtype=torch.float64)
    p, h0 = p.float().double(), h0.float().double()  # both runs see the same (rounded) inputs
    outs = []
    for dt in (torch.float64, torch.float32):
        pi, hi = p.to(dt).clone().requires_grad_(), h0.to(dt).clone().requires_grad_()
        h, hn = torch.ops.fusedrnn.minrnn_fwd(pi, None, hi, None, False, True, cell)
        (h.sum() + hn.square().sum()).backward()
        outs.append([h, hn, pi.grad, hi.grad])
    for want, got in zip(*outs):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, **TOL[torch.float32])


@pytest.mark.skipif(not _fused_built(), reason="the fused minGRU C++ ops are not built")
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_fused_traces_under_torch_compile(cell):
    """torch.compile(fullgraph=True) goes through the fused ops' fake and autograd formulas
    (without lengths: their validation reads tensor values, which a full graph cannot)."""
    torch.manual_seed(17)
    m = cell(4, 20, bidirectional=True).double()
    x, h0 = torch.randn(7, 3, 4, dtype=torch.float64), torch.randn(2, 3, 20, dtype=torch.float64)
    runs = []
    for fn in (m, torch.compile(m, fullgraph=True, backend="aot_eager")):
        m.zero_grad()
        xi = x.clone().requires_grad_()
        y, h_n = fn(xi, h0)
        (y.square().sum() + h_n.sum()).backward()
        runs.append([y, h_n, xi.grad] + [p.grad.clone() for p in m.parameters()])
    for got, want in zip(runs[1], runs[0]):
        torch.testing.assert_close(got, want, **F64)


@pytest.mark.skipif(not _fused_built(), reason="the fused minGRU C++ ops are not built")
def test_fused_ops_registered_at_import():
    """In a fresh process the first MinGRU call may be inside a full-graph trace: the fused ops'
    fake and autograd registration must already have happened at import (this test process
    registered them long ago, so only a subprocess sees the first call)."""
    import subprocess
    import sys

    code = ("import torch, fusedrnn\n"
            "m = fusedrnn.MinGRU(4, 8)\n"
            "torch.compile(m, fullgraph=True, backend='aot_eager')(torch.randn(5, 2, 4))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
