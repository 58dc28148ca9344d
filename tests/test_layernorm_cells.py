"""LayerNormLSTM / LayerNormGRU (layers and cells) against their plain PyTorch equations.

The equations are written here, independently of the package (Ba et al. 2016 as Haste implements
them, issue #14): a per-step float64 loop with F.layer_norm, per layer and direction, masking
packed sequences by their lengths. Every backend that implements the cells is compared on
outputs, final states and every gradient by name; the others must refuse clearly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import backends

from conftest import TOL

LN_BACKENDS = [b for b in ("reference", "cpu") if b in fusedrnn.available_backends()]
# (triton runs the cells too, but not float64: tests/test_triton_layernorm.py, fp32 against the
# float64 loop of this file)
F64 = TOL[torch.float64]


@pytest.fixture(autouse=True)
def poison():
    """Buffers the C++ ops allocate start as NaN: an element the loops forget to write fails."""
    if "cpu" not in LN_BACKENDS:
        yield
        return
    fusedrnn._ext._C._set_debug_poison(True)
    yield
    fusedrnn._ext._C._set_debug_poison(False)


def ln(v, w, b=None):
    return F.layer_norm(v, v.shape[-1:], w, b, eps=1e-5)


def lstm_step(p, x, h, c):
    gates = (ln(x @ p["weight_ih"].T, p["ln_ih_weight"]) + ln(h @ p["weight_hh"].T,
             p["ln_hh_weight"]) + p["bias_ih"] + p["bias_hh"])
    i, f, g, o = gates.chunk(4, 1)
    c2 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h2 = torch.sigmoid(o) * torch.tanh(ln(c2, p["ln_c_weight"], p["ln_c_bias"]))
    return h2, c2


def gru_step(p, x, h, c):
    gx = ln(x @ p["weight_ih"].T, p["ln_ih_weight"]) + p["bias_ih"]
    gh = ln(h @ p["weight_hh"].T, p["ln_hh_weight"]) + p["bias_hh"]
    xr, xz, xn = gx.chunk(3, 1)
    hr, hz, hn = gh.chunk(3, 1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h, None


def plain_layers(params, lstm, x, lengths, h0, c0, num_layers, dirs, reset=None, zoneout=None):
    """x [T, B, I] padded, lengths [B] (any order); h0/c0 [L*D, B, H]. Returns (y, h_n, c_n)
    with zeros past each length, as torch.nn's packed LSTM/GRU.

    reset [T, B] (1 = a segment starts at t): the state carried into step t (forward), or from
    step t into t - 1 (reverse), is zeroed, within each sequence. zoneout [L*D, T, B, Z]: the
    keep-old mask, h_t = m h_{t-1} + (1 - m) h~_t (Z = H, or 2H for the LSTM: h part, c part)."""
    T, B = x.shape[:2]
    step = lstm_step if lstm else gru_step
    hn, cn = [], []
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            p = {k[: -len(sfx)]: v for k, v in params.items() if k.endswith(sfx)}
            h, c = h0[layer * dirs + d], (c0[layer * dirs + d] if lstm else None)
            H = h.shape[1]
            ys = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                src = t + 1 if d else t  # the step whose reset cuts the state entering t
                if reset is not None and src < T:
                    keep = 1 - (reset[src] * (src < lengths)).unsqueeze(1)
                    h = h * keep
                    c = c * keep if lstm else None
                h2, c2 = step(p, x[t], h, c)
                if zoneout is not None:
                    m = zoneout[layer * dirs + d, t]
                    h2 = m[:, :H] * h + (1 - m[:, :H]) * h2
                    if lstm:
                        c2 = m[:, H:] * c + (1 - m[:, H:]) * c2
                live = (t < lengths).unsqueeze(1)
                h = torch.where(live, h2, h)
                c = torch.where(live, c2, c) if lstm else None
                ys[t] = torch.where(live, h2, torch.zeros_like(h2))
            outs.append(torch.stack(ys))
            hn.append(h)
            cn.append(c)
        x = torch.cat(outs, 2)
    return x, torch.stack(hn), (torch.stack(cn) if lstm else None)


def _randomise(m, seed=0):
    """LN gains/biases away from 1/0 so that their gradients and effects are tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("ln_"):
                p.copy_((0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype)) if "weight" in name
                        else 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _grads(outs, wts, leaves):
    loss = sum((o * w).sum() for o, w in zip(outs, wts) if o is not None)
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("backend", LN_BACKENDS)
@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU"])
def test_layer_matches_plain_equations(backend, cls):
    """2 layers, bidirectional, packed unsorted lengths, hx given; float64."""
    torch.manual_seed(0)
    lstm = cls == "LayerNormLSTM"
    I, H, L, T = 5, 7, 2, 6
    lengths = torch.tensor([4, 6, 1, 5])
    B = len(lengths)
    m = getattr(fusedrnn, cls)(I, H, num_layers=L, bidirectional=True, backend=backend,
                               dtype=torch.float64)
    _randomise(m)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2 * L, B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2 * L, B, H, dtype=torch.float64, requires_grad=True)
    hx = (h0, c0) if lstm else h0
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, hid = m(packed, hx)
    y, _ = pad_packed_sequence(out, total_length=T)
    h_n, c_n = hid if lstm else (hid, None)

    params = dict(m.named_parameters())
    ry, rh, rc = plain_layers(params, lstm, x, lengths, h0, c0, L, 2)
    torch.testing.assert_close(y, ry, **F64)
    torch.testing.assert_close(h_n, rh, **F64)
    if lstm:
        torch.testing.assert_close(c_n, rc, **F64)

    wts = [torch.randn_like(t) for t in (ry, rh, rc) if t is not None]
    names = list(params)
    leaves = [x, h0, *([c0] if lstm else []), *params.values()]
    got = _grads([y, h_n, c_n], wts, leaves)
    want = _grads([ry, rh, rc], wts, leaves)
    labels = ["x", "h0", *(["c0"] if lstm else []), *names]
    assert len(got) == len(labels)
    for name, a, b in zip(labels, got, want):
        torch.testing.assert_close(a, b, **F64, msg=lambda s, n=name: f"grad {n}: {s}")


@pytest.mark.parametrize("backend", LN_BACKENDS)
@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU"])
@pytest.mark.parametrize("carry", ["reset", "zoneout", "reset+zoneout"])
def test_layer_reset_zoneout_match_plain_equations(backend, cls, carry):
    """reset= (per-step state resets) and zoneout on the LN layers: 2 layers, bidirectional, hx
    given, float64; outputs, final states and every gradient by name against the plain loop
    that zeroes the carried state where reset = 1 and mixes in the kept state by the mask."""
    torch.manual_seed(7)
    lstm = cls == "LayerNormLSTM"
    I, H, L, T, B = 4, 6, 2, 7, 3
    zo = "zoneout" in carry
    m = getattr(fusedrnn, cls)(I, H, num_layers=L, bidirectional=True, backend=backend,
                               dtype=torch.float64, zoneout=(0.3, 0.2) if lstm and zo else
                               (0.3 if zo else 0.0))
    _randomise(m, 7)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2 * L, B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2 * L, B, H, dtype=torch.float64, requires_grad=True)
    hx = (h0, c0) if lstm else h0
    reset = None
    if "reset" in carry:
        reset = torch.zeros(T, B, dtype=torch.bool)
        reset[0, 0] = reset[2, 0] = reset[3, 1] = reset[T - 1, 2] = reset[1, 2] = True
    torch.manual_seed(8)
    mask = m.zoneout_mask(T, B) if zo else None  # the draw the forward makes under this seed
    torch.manual_seed(8)
    out, hid = m(x, hx, reset=reset)
    h_n, c_n = hid if lstm else (hid, None)
    params = dict(m.named_parameters())
    ry, rh, rc = plain_layers(params, lstm, x, torch.full((B,), T), h0, c0, L, 2,
                              None if reset is None else reset.double(), mask)
    torch.testing.assert_close(out, ry, **F64)
    torch.testing.assert_close(h_n, rh, **F64)
    if lstm:
        torch.testing.assert_close(c_n, rc, **F64)
    wts = [torch.randn_like(t) for t in (ry, rh, rc) if t is not None]
    leaves = [x, h0, *([c0] if lstm else []), *params.values()]
    got = _grads([out, h_n, c_n], wts, leaves)
    want = _grads([ry, rh, rc], wts, leaves)
    labels = ["x", "h0", *(["c0"] if lstm else []), *params]
    for name, a, b in zip(labels, got, want):
        torch.testing.assert_close(a, b, **F64, msg=lambda s, n=name: f"grad {n}: {s}")
    if reset is not None:  # and the resets change the result (the test can fail)
        assert not torch.allclose(m(x, hx)[0], out)


@pytest.mark.parametrize("backend", LN_BACKENDS)
@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU"])
def test_layer_batch_first_unbatched_no_bias(backend, cls):
    torch.manual_seed(1)
    lstm = cls == "LayerNormLSTM"
    m = getattr(fusedrnn, cls)(3, 4, bias=False, batch_first=True, backend=backend,
                               dtype=torch.float64)
    _randomise(m, 1)
    params = dict(m.named_parameters())
    zeros = torch.zeros(16 if lstm else 12, dtype=torch.float64)
    ref_params = {**params, "bias_ih_l0": zeros, "bias_hh_l0": zeros}
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    y, hid = m(x)
    z = torch.zeros(1, 2, 4, dtype=torch.float64)
    ry, rh, _ = plain_layers(ref_params, lstm, x.transpose(0, 1), torch.tensor([5, 5]), z, z,
                             1, 1)
    torch.testing.assert_close(y, ry.transpose(0, 1), **F64)
    yu, hu = m(x[0])  # unbatched [T, I]
    torch.testing.assert_close(yu, ry[:, 0], **F64)
    torch.testing.assert_close(hu[0] if lstm else hu, rh[:, 0], **F64)


@pytest.mark.parametrize("backend", LN_BACKENDS)
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_cell_equals_layer_at_one_step(backend, kind):
    torch.manual_seed(2)
    lstm = kind == "LSTM"
    cell = getattr(fusedrnn, f"LayerNorm{kind}Cell")(3, 5, backend=backend, dtype=torch.float64)
    layer = getattr(fusedrnn, f"LayerNorm{kind}")(3, 5, backend=backend, dtype=torch.float64)
    _randomise(cell, 3)
    assert {n + "_l0" for n, _ in cell.named_parameters()} == set(layer.state_dict())
    layer.load_state_dict({n + "_l0": p for n, p in cell.state_dict().items()})
    x = torch.randn(4, 3, dtype=torch.float64)
    h = torch.randn(4, 5, dtype=torch.float64)
    c = torch.randn(4, 5, dtype=torch.float64)
    if lstm:
        hc, cc = cell(x, (h, c))
        _, (hl, cl) = layer(x[None], (h[None], c[None]))
        torch.testing.assert_close(cc, cl[0], **F64)
        # against the equations too, and unbatched / hx=None
        rh, rc = lstm_step(dict(cell.named_parameters()), x, h, c)
        torch.testing.assert_close(hc, rh, **F64)
        hu, cu = cell(x[0])
        ru = lstm_step(dict(cell.named_parameters()), x[:1], torch.zeros(1, 5,
                       dtype=torch.float64), torch.zeros(1, 5, dtype=torch.float64))
        torch.testing.assert_close(hu, ru[0][0], **F64)
        torch.testing.assert_close(cu, ru[1][0], **F64)
    else:
        hc = cell(x, h)
        _, hl = layer(x[None], h[None])
        torch.testing.assert_close(hc, gru_step(dict(cell.named_parameters()), x, h, None)[0],
                                   **F64)
        assert cell(x[0]).shape == (5,)
    torch.testing.assert_close(hc, hl[0], **F64)


def test_state_dict_names_and_init():
    m = fusedrnn.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True)
    names = list(m.state_dict())
    for k in range(2):
        for sfx in ("", "_reverse"):
            for n, shape in (("weight_ih", (16, 3 if k == 0 else 8)), ("weight_hh", (16, 4)),
                             ("bias_ih", (16,)), ("bias_hh", (16,)), ("ln_ih_weight", (16,)),
                             ("ln_hh_weight", (16,)), ("ln_c_weight", (4,)),
                             ("ln_c_bias", (4,))):
                assert m.state_dict()[f"{n}_l{k}{sfx}"].shape == shape
    assert len(names) == 32
    assert names[:8] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "ln_ih_weight_l0", "ln_hh_weight_l0", "ln_c_weight_l0", "ln_c_bias_l0"]
    assert torch.equal(m.ln_c_bias_l1_reverse, torch.zeros(4))
    assert torch.equal(m.ln_hh_weight_l1, torch.ones(16))
    bound = 4 ** -0.5
    assert m.weight_hh_l0.abs().max() <= bound and m.weight_hh_l0.std() > 0.1
    g = fusedrnn.LayerNormGRU(3, 4)
    assert set(g.state_dict()) == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                   "ln_ih_weight_l0", "ln_hh_weight_l0"}
    assert g.ln_ih_weight_l0.shape == (12,)
    c = fusedrnn.LayerNormLSTMCell(3, 4)
    assert list(c.state_dict()) == ["weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                    "ln_ih_weight", "ln_hh_weight", "ln_c_weight", "ln_c_bias"]
    assert list(fusedrnn.LayerNormGRUCell(3, 4).state_dict())[-2:] == ["ln_ih_weight",
                                                                       "ln_hh_weight"]
    c.ln_c_bias.data.fill_(3.0)
    c.reset_parameters()
    assert torch.equal(c.ln_c_bias, torch.zeros(4)) and torch.equal(c.ln_c_weight, torch.ones(4))


def test_errors():
    with pytest.raises(ValueError, match="proj_size"):
        fusedrnn.LayerNormLSTM(3, 4, proj_size=2)
    m = fusedrnn.LayerNormLSTM(3, 4)
    with pytest.raises(ValueError, match="LSTM: Expected input to be 2D or 3D, got 4D instead"):
        m(torch.randn(1, 2, 3, 3))
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        m(torch.randn(2, 2, 5))
    with pytest.raises(RuntimeError, match="Expected hidden\\[0\\] size"):
        m(torch.randn(2, 2, 3), (torch.zeros(1, 3, 4), torch.zeros(1, 2, 4)))
    g = fusedrnn.LayerNormGRUCell(3, 4)
    with pytest.raises(RuntimeError, match="input has inconsistent input_size"):
        g(torch.randn(2, 5))
    with pytest.raises(ValueError, match="cell_params"):
        backends.recurrence("LN_GRU", torch.randn(2, 1, 12), torch.randn(12, 4), None,
                            torch.zeros(1, 4), backend="reference")
    with pytest.raises(ValueError, match="ln_c_weight must have shape \\(4,\\)"):
        backends.recurrence("LN_LSTM", torch.randn(2, 1, 16), torch.randn(16, 4), None,
                            torch.zeros(1, 4), backend="reference",
                            cell_params=[torch.ones(16), torch.ones(5), torch.zeros(4)])


def test_backends_without_ln_refuse_or_fall_back(monkeypatch):
    """A backend whose op does not take ``cell_params`` (a stand-in: every backend of ours runs
    the cells now): chosen by name, a
    NotImplementedError naming the cell and the backends that run it; with "auto", the
    reference's numbers and a warning naming the cell. It is never called with an LN mode."""
    import types

    from fusedrnn.ops.reference import recurrence_ref

    def plain_op(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, recurrent_grad_clip=None,
                 *, reset=None, zoneout=None):
        raise AssertionError(f"a backend without cell_params ran {mode}")

    plain = types.SimpleNamespace(__name__="fusedrnn.ops.plain", recurrence=plain_op)
    monkeypatch.setattr(backends, "resolve", lambda name, device: plain)
    monkeypatch.setattr(backends.RECURRENCE, "_warned", set())
    for mode, cls in (("LN_GRU", "LayerNormGRU"), ("LN_LSTM", "LayerNormLSTM")):
        xw, w_hh, b_hh, h0, c0, cp = _op_args(mode)
        args = (mode, xw, w_hh, b_hh, h0, c0)
        with pytest.raises(NotImplementedError, match=rf"backend 'plain' does not implement "
                           rf"{cls} \({mode}\); .*backends that do: 'reference'"):
            backends.recurrence(*args, backend="triton", cell_params=cp)
        with pytest.warns(UserWarning, match=rf"'plain' does not implement {cls} \({mode}\); "
                          "falling back to the reference"):
            got = backends.recurrence(*args, backend="auto", cell_params=cp)
        for a, b in zip(got, recurrence_ref(*args, cell_params=cp)):
            if b is not None:
                torch.testing.assert_close(a, b, **F64)


def test_auto_runs_the_cells_on_cpu_without_fallback():
    import warnings

    xw, w_hh, b_hh, h0, c0, cp = _op_args("LN_LSTM")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backends.recurrence("LN_LSTM", xw, w_hh, b_hh, h0, c0, backend="auto", cell_params=cp)
    want = "fusedrnn.ops.cpu" if "cpu" in fusedrnn.available_backends() else \
        "fusedrnn.ops.reference_backend"
    assert backends.resolve("auto", torch.device("cpu")).__name__ == want
    assert backends._accepts(backends.resolve("auto", torch.device("cpu")), "cell_params")


def _op_args(mode, T=3, B=2, H=3, lengths=None, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = 4 if mode == "LN_LSTM" else 3
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()  # noqa: E731
    cp = [(1 + 0.3 * torch.randn(G * H, generator=g, dtype=dtype)).requires_grad_()]
    if mode == "LN_LSTM":
        cp += [(1 + 0.3 * torch.randn(H, generator=g, dtype=dtype)).requires_grad_(), r(H)]
    return (r(T, B, G * H), r(G * H, H), r(G * H), r(B, H),
            r(B, H) if mode == "LN_LSTM" else None, cp)


@pytest.mark.parametrize("backend", LN_BACKENDS)
@pytest.mark.parametrize("mode", ["LN_LSTM", "LN_GRU"])
def test_gradcheck_op(backend, mode):
    xw, w_hh, b_hh, h0, c0, cp = _op_args(mode, T=3, B=2, H=2)
    lengths, reverse = torch.tensor([2, 3]), mode == "LN_GRU"

    def f(xw, w_hh, b_hh, h0, c0, *cp):
        y, h, c = backends.recurrence(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse,
                                      backend=backend, cell_params=list(cp))
        return (y, h) if c is None else (y, h, c)

    inputs = [t for t in (xw, w_hh, b_hh, h0, c0) if t is not None]
    if c0 is None:
        assert torch.autograd.gradcheck(lambda xw, w, b, h, *cp: f(xw, w, b, h, None, *cp),
                                        (*inputs, *cp), fast_mode=True)
    else:
        assert torch.autograd.gradcheck(f, (*inputs, *cp), fast_mode=True)


@pytest.mark.parametrize("mode", ["LN_LSTM", "LN_GRU"])
@pytest.mark.parametrize("carry", ["none", "reset", "zoneout", "reset+zoneout"])
def test_op_cpu_matches_reference_edges(mode, carry):
    """The fused loop at sizes off the register blocks, sorted/unsorted lengths, no bias, with
    and without reset / zoneout."""
    if "cpu" not in fusedrnn.available_backends():
        pytest.skip("cpu backend not built")
    g = torch.Generator().manual_seed(11)
    for H, B, lengths in ((1, 1, None), (17, 9, [5, 0, 3, 7, 7, 1, 2, 6, 4]), (33, 13, None)):
        xw, w_hh, b_hh, h0, c0, cp = _op_args(mode, T=7, B=B, H=H, seed=H)
        ln_t = None if lengths is None else torch.tensor(lengths)
        kw = {}
        if "reset" in carry:
            kw["reset"] = torch.bernoulli(torch.full((7, B), 0.3, dtype=xw.dtype), generator=g)
        if "zoneout" in carry:
            Z = 2 * H if mode == "LN_LSTM" else H
            kw["zoneout"] = torch.bernoulli(torch.full((7, B, Z), 0.4, dtype=xw.dtype),
                                            generator=g)
        for bias in (b_hh, None):
            outs = [backends.recurrence(mode, xw, w_hh, bias, h0, c0, ln_t, rev, backend=be,
                                        cell_params=cp, **kw)
                    for be in ("cpu", "reference") for rev in (False, True)]
            for a, b in zip(outs[:2], outs[2:]):
                for u, v in zip(a, b):
                    if u is not None:
                        torch.testing.assert_close(u, v, **F64)
            leaves = [t for t in (xw, w_hh, bias, h0, c0, *cp) if t is not None]
            wts = [torch.randn_like(t) for t in outs[0] if t is not None]
            for k in (0, 1):
                got = _grads(outs[k], wts, leaves)
                want = _grads(outs[k + 2], wts, leaves)
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU"])
def test_float32_cpu_vs_float64_reference(cls):
    if "cpu" not in fusedrnn.available_backends():
        pytest.skip("cpu backend not built")
    torch.manual_seed(4)
    m32 = getattr(fusedrnn, cls)(8, 16, num_layers=2, backend="cpu")
    _randomise(m32, 4)
    m64 = getattr(fusedrnn, cls)(8, 16, num_layers=2, backend="reference",
                                 dtype=torch.float64)
    m64.load_state_dict({k: v.double() for k, v in m32.state_dict().items()})
    x = torch.randn(12, 5, 8)
    y32, _ = m32(x)
    y64, _ = m64(x.double())
    torch.testing.assert_close(y32.double(), y64, **TOL[torch.float32])
    y32.sum().backward()
    y64.sum().backward()
    for (n, a), b in zip(m32.named_parameters(), m64.parameters()):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-4,
                                   msg=lambda s, n=n: f"grad {n}: {s}")


def test_from_haste_layer_norm_lstm():
    """Haste's documented layout (frameworks/pytorch/layer_norm_lstm.py and its CUDA kernels):
    x @ kernel [I, 4H], h @ recurrent_kernel [H, 4H], one bias, gates (i, g, f, o), gamma [2, 4H]
    for the two products' LNs, gamma_h / beta_h for LN(c); h = o * tanh(LN(c))."""
    from fusedrnn.nn.layernorm import from_haste_layer_norm_lstm

    torch.manual_seed(5)
    I, H, T, B = 3, 4, 5, 2
    d = torch.float64
    sd = {"kernel": torch.randn(I, 4 * H, dtype=d),
          "recurrent_kernel": torch.randn(H, 4 * H, dtype=d),
          "bias": torch.randn(4 * H, dtype=d), "gamma": 0.5 + torch.rand(2, 4 * H, dtype=d),
          "gamma_h": 0.5 + torch.rand(H, dtype=d), "beta_h": torch.randn(H, dtype=d)}
    x = torch.randn(T, B, I, dtype=d)
    h = torch.zeros(B, H, dtype=d)
    c = torch.zeros(B, H, dtype=d)
    ys = []
    for t in range(T):  # Haste's equations, in its layout and gate order
        v = (ln(x[t] @ sd["kernel"], sd["gamma"][0])
             + ln(h @ sd["recurrent_kernel"], sd["gamma"][1])
             + sd["bias"])
        i, g, f, o = v.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(ln(c, sd["gamma_h"], sd["beta_h"]))
        ys.append(h)
    for backend in LN_BACKENDS:
        m = fusedrnn.LayerNormLSTM(I, H, backend=backend, dtype=d)
        m.load_state_dict(from_haste_layer_norm_lstm(sd))
        y, (hn, cn) = m(x)
        torch.testing.assert_close(y, torch.stack(ys), **F64)
        torch.testing.assert_close(cn[0], c, **F64)


ISAS = fusedrnn._ext._C._cpu_isas() if "cpu" in LN_BACKENDS else []


def _op_run(backend, mode, args, lengths, reverse, dtype, seed=1):
    """Outputs and every input gradient of one op call in ``dtype`` (loss on y, h_T, c_T)."""
    def leaf(a):
        return a.detach().to(dtype).requires_grad_()

    xw, w_hh, b_hh, h0, c0, cp = (None if a is None else
                                  [leaf(p) for p in a] if isinstance(a, list) else leaf(a)
                                  for a in args)
    outs = backends.recurrence(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, backend=backend,
                               cell_params=cp)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum()
               for o in outs if o is not None)
    leaves = [t for t in (xw, w_hh, b_hh, h0, c0, *cp) if t is not None]
    return [o for o in outs if o is not None], list(torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mode", ["LN_LSTM", "LN_GRU"])
def test_isa_paths_float32(monkeypatch, isa, mode):
    """Every instruction set the CPU has, sizes on and off the register-block edges."""
    monkeypatch.setenv("FUSEDRNN_CPU_ISA", isa)
    for B, H, lens in ((1, 1, None), (3, 17, [5, 2, 4]), (13, 16, None),
                       (7, 33, [1, 5, 0, 5, 3, 2, 4])):
        args = _op_args(mode, T=5, B=B, H=H, seed=B + H)
        lengths = None if lens is None else torch.tensor(lens)
        got = _op_run("cpu", mode, args, lengths, B % 2 == 1, torch.float32)
        want = _op_run("reference", mode, args, lengths, B % 2 == 1, torch.float64)
        for a, b in zip(got[0] + got[1], want[0] + want[1]):
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mode", ["LN_LSTM", "LN_GRU"])
def test_bitwise_across_threads_and_batch(monkeypatch, isa, mode):
    """The row reductions are per row in a fixed order: 1 and 2 threads agree bitwise (outputs
    and every gradient), and a row alone gives bitwise its outputs in the batch."""
    monkeypatch.setenv("FUSEDRNN_CPU_ISA", isa)
    T, B, H = 10, 40, 40
    args = _op_args(mode, T=T, B=B, H=H, seed=3)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(0))
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _op_run("cpu", mode, args, lengths, True, torch.float32)
        torch.set_num_threads(2)
        two = _op_run("cpu", mode, args, lengths, True, torch.float32)
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(one[0] + one[1], two[0] + two[1]):
        assert torch.equal(a, b)
    xw, w_hh, b_hh, h0, c0, cp = args
    row = [xw[:, 5:6], w_hh, b_hh, h0[5:6], None if c0 is None else c0[5:6], cp]
    alone = _op_run("cpu", mode, row, lengths[5:6], True, torch.float32)
    assert torch.equal(alone[0][0], two[0][0][:, 5:6])


@pytest.mark.parametrize("mode", ["LN_LSTM", "LN_GRU"])
def test_opcheck(mode):
    if "cpu" not in LN_BACKENDS:
        pytest.skip("cpu backend not built")
    xw, w_hh, b_hh, h0, c0, cp = _op_args(mode, T=4, B=3, H=5)
    lengths = torch.tensor([4, 1, 3])
    reset = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=xw.dtype)
    zo = torch.bernoulli(torch.full((4, 3, 5 * (2 if mode == "LN_LSTM" else 1)), 0.3,
                                    dtype=xw.dtype))
    for carry in ((None, None), (reset, None), (reset, zo)):
        fwd = (mode, xw, w_hh, b_hh, h0, c0, lengths, True, None, True, *carry, cp)
        torch.library.opcheck(torch.ops.fusedrnn.recurrence_fwd.default, fwd)
        d = [t.detach() if isinstance(t, torch.Tensor) else t for t in fwd]
        d[-1] = [p.detach() for p in cp]
        y, h, c, ws = torch.ops.fusedrnn.recurrence_fwd(*d)
        bwd = (mode, torch.randn_like(y), torch.randn_like(h),
               torch.randn_like(c) if mode == "LN_LSTM" else None, *d[1:9], y, ws, 0.0, *carry,
               d[-1])
        torch.library.opcheck(torch.ops.fusedrnn.recurrence_bwd.default, bwd)


@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU"])
def test_recurrent_grad_clip_cpu_matches_reference(cls):
    if "cpu" not in LN_BACKENDS:
        pytest.skip("cpu backend not built")
    torch.manual_seed(6)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    ms = [getattr(fusedrnn, cls)(4, 5, num_layers=2, backend=b, recurrent_grad_clip=0.05,
                                 dtype=torch.float64) for b in ("cpu", "reference")]
    _randomise(ms[1], 6)
    ms[0].load_state_dict(ms[1].state_dict())
    for m in ms:
        m(x)[0].pow(2).sum().backward()
    for (n, a), b in zip(ms[0].named_parameters(), ms[1].parameters()):
        torch.testing.assert_close(a.grad, b.grad, **F64, msg=lambda s, n=n: f"grad {n}: {s}")


def test_cell_step_op_refuses_ln_cells():
    """The streaming single-step op has no row normalisation: it must refuse, not run an LSTM."""
    if "cpu" not in LN_BACKENDS:
        pytest.skip("cpu backend not built")
    x, w, h = torch.randn(1, 3), torch.randn(16, 3), torch.zeros(1, 4)
    with pytest.raises(RuntimeError, match="cell_step does not implement mode LN_LSTM"):
        torch.ops.fusedrnn.cell_step("LN_LSTM", x, w, None, torch.randn(16, 4), None, h, h)


def test_auto_falls_back_to_the_next_backend_that_runs_the_layer(monkeypatch):
    """When "auto"'s backend calls a layer unsupported (triton: LN rows wider than one program),
    the next of "auto"'s backends for the device that runs it is used (on a GPU: cuda after
    triton), the reference only when none does. Here on CPU tensors with a stand-in first
    backend and "auto" = (stand-in, cpu)."""
    import types

    if "cpu" not in fusedrnn.available_backends():
        pytest.skip("the cpu backend is not built")
    xw, w_hh, b_hh, h0, c0, cp = _op_args("LN_LSTM")
    calls = []
    wide = types.SimpleNamespace(
        __name__="fusedrnn.ops.wide", unavailable=lambda: None, supports=lambda d: True,
        unsupported=lambda *a: "rows too wide",
        recurrence=lambda *a, **k: calls.append("wide"))
    monkeypatch.setattr(backends, "resolve", lambda name, device: wide)
    monkeypatch.setattr(backends, "_accepts", lambda mod, name: True)
    monkeypatch.setitem(backends.RECURRENCE._loaded, "wide", (wide, None))
    monkeypatch.setitem(backends.RECURRENCE.auto, "cpu", ("wide", "cpu"))
    monkeypatch.setattr(backends.RECURRENCE, "_warned", set())
    with pytest.warns(UserWarning, match=r"backend 'wide' does not run this layer \(rows too "
                      r"wide\); falling back to the cpu backend"):
        got = backends.recurrence("LN_LSTM", xw, w_hh, b_hh, h0, c0, backend="auto",
                                  cell_params=cp)
    assert calls == []
    want = backends.RECURRENCE.load("cpu")[0].recurrence("LN_LSTM", xw, w_hh, b_hh, h0, c0,
                                                         cell_params=cp)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    monkeypatch.setitem(backends.RECURRENCE.auto, "cpu", ("wide",))
    monkeypatch.setattr(backends.RECURRENCE, "_warned", set())
    with pytest.warns(UserWarning, match="falling back to the reference backend"):
        got = backends.recurrence("LN_LSTM", xw, w_hh, b_hh, h0, c0, backend="auto",
                                  cell_params=cp)
    from fusedrnn.ops.reference import recurrence_ref
    ref = recurrence_ref("LN_LSTM", xw, w_hh, b_hh, h0, c0, cell_params=cp)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **F64)
