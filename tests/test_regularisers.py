"""The sequence-level regularisers of the drop-in layers: ``weight_drop`` (DropConnect on the
recurrent weights, AWD-LSTM's WeightDrop) and ``dropout_mode="locked"`` (one dropout mask per
sequence and layer, AWD-LSTM's LockedDropout), against torch.nn modules given the same masks by
hand, in float64. The masks are drawn as ``fusedrnn/nn/_regularisers.py`` documents."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from conftest import TOL

T64 = TOL[torch.float64]
BACKENDS = [b for b in ("reference", "cpu", "triton") if b in fusedrnn.available_backends()]
KINDS = {"lstm": (torch.nn.LSTM, fusedrnn.LSTM), "gru": (torch.nn.GRU, fusedrnn.GRU),
         "rnn": (torch.nn.RNN, fusedrnn.RNN)}


def _twins(kind, backend="reference", dtype=torch.float64, **kw):
    tcls, fcls = KINDS[kind]
    torch.manual_seed(0)
    ref = tcls(3, 4, dtype=dtype, **{k: v for k, v in kw.items()
                                      if k not in ("weight_drop", "dropout_mode")})
    ours = fcls(3, 4, dtype=dtype, backend=backend, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _hh_names(m):
    dirs = ["", "_reverse"] if m.bidirectional else [""]
    return [f"weight_hh_l{k}{d}" for k in range(m.num_layers) for d in dirs]


def _draw_weight_masks(m, p, seed):
    """The weight_drop masks of one forward call: one bernoulli_(1 - p) per recurrent weight in
    layer, then direction order (nothing else draws in between when dropout == 0)."""
    torch.manual_seed(seed)
    return {n: torch.empty_like(getattr(m, n)).bernoulli_(1 - p) for n in _hh_names(m)}


# -- weight_drop ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(KINDS))
def test_weight_drop_eval_equals_plain_layer(kind):
    ref, ours = _twins(kind, weight_drop=0.5, num_layers=2, bidirectional=True)
    ours.eval()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    y_ref, h_ref = ref(x)
    y, h = ours(x)
    torch.testing.assert_close(y, y_ref, **T64)
    torch.testing.assert_close(h, h_ref, **T64)
    # off by default, and 0 is off in training too: the same numbers as a plain layer
    plain = KINDS[kind][1](3, 4, dtype=torch.float64, num_layers=2, bidirectional=True,
                           backend="reference")
    plain.load_state_dict(ours.state_dict())
    zero = KINDS[kind][1](3, 4, dtype=torch.float64, num_layers=2, bidirectional=True,
                          backend="reference", weight_drop=0.0)
    zero.load_state_dict(ours.state_dict())
    assert torch.equal(zero(x)[0], plain(x)[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_weight_drop_train_equals_hand_masked_whh(kind, backend):
    p, seed = 0.4, 123
    bidir = backend != "triton"  # keep the interpreter case small
    dt = torch.float32 if backend == "triton" else torch.float64  # its kernels: no float64
    tol = TOL[dt]
    ref, ours = _twins(kind, backend, dt, weight_drop=p, num_layers=2, bidirectional=bidir)
    ours.train()
    masks = _draw_weight_masks(ours, p, seed)
    with torch.no_grad():
        for n, mk in masks.items():
            getattr(ref, n).mul_(mk / (1 - p))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 3, dtype=dt, generator=gen)
    up = torch.randn(4, 3, 8 if bidir else 4, dtype=dt, generator=gen)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, _ = ref(xr)
    torch.manual_seed(seed)
    y, _ = ours(xo)
    torch.testing.assert_close(y, y_ref, **tol)
    (y_ref * up).sum().backward()
    (y * up).sum().backward()
    torch.testing.assert_close(xo.grad, xr.grad, **tol)
    for n, mk in masks.items():
        # d loss / d raw W_hh = mask / (1 - p) * d loss / d (masked W_hh): reaches the parameter
        torch.testing.assert_close(getattr(ours, n).grad, getattr(ref, n).grad * mk / (1 - p),
                                   **tol)
    # a second call draws a new mask
    torch.manual_seed(seed + 1)
    y2, _ = ours(x)
    assert not torch.allclose(y2, y)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
def test_weight_drop_gradcheck(backend):
    _, m = _twins("lstm", backend, weight_drop=0.3)
    m.train()
    w0 = m.weight_hh_l0.detach().clone().requires_grad_()
    x0 = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, w):
        torch.manual_seed(7)  # the same mask on every evaluation
        out, (h, c) = torch.func.functional_call(m, {"weight_hh_l0": w}, (x,))
        return out, h, c

    assert torch.autograd.gradcheck(f, (x0, w0))
    # and the mask is really on: the weight's gradient has zeros exactly where it dropped
    torch.manual_seed(7)
    mk = torch.empty_like(w0).bernoulli_(1 - 0.3)
    out = f(x0, w0)
    (gw,) = torch.autograd.grad(sum(o.sum() for o in out), w0)
    assert bool((gw[mk == 0] == 0).all()) and bool((gw[mk == 1] != 0).any())


def test_weight_drop_under_torch_compile():
    torch._dynamo.reset()
    p = 0.5
    _, m = _twins("lstm", "cpu" if "cpu" in BACKENDS else "reference", weight_drop=p,
                  batch_first=True)
    ref = torch.nn.LSTM(3, 4, batch_first=True, dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    masks = _draw_weight_masks(m, p, 5)
    with torch.no_grad():
        ref.weight_hh_l0.mul_(masks["weight_hh_l0"] / (1 - p))
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    with torch._dynamo.config.patch(allow_rnn=True):
        fn = torch.compile(m, fullgraph=True, backend="aot_eager")
        torch.manual_seed(5)
        y, _ = fn(x)
        y.sum().backward()
        m.eval()
        y_eval, _ = fn(x)
    torch.testing.assert_close(y, ref(x)[0], **T64)
    assert m.weight_hh_l0.grad is not None and m.weight_hh_l0.grad.abs().sum() > 0
    with torch.no_grad():
        ref.weight_hh_l0.copy_(m.weight_hh_l0)
    torch.testing.assert_close(y_eval, ref(x)[0], **T64)


@pytest.mark.parametrize("bad", [1.0, -0.1, 2, True, "0.5", None])
def test_weight_drop_bad_value(bad):
    with pytest.raises(ValueError, match=r"weight_drop must be a float in \[0, 1\)"):
        fusedrnn.LSTM(3, 4, weight_drop=bad)


def test_keywords_keep_state_dict_and_repr():
    plain = fusedrnn.GRU(3, 4, num_layers=2)
    m = fusedrnn.GRU(3, 4, num_layers=2, dropout=0.2, weight_drop=0.25, dropout_mode="locked")
    assert list(m.state_dict()) == list(plain.state_dict())
    assert "weight_drop=0.25" in repr(m) and "dropout_mode='locked'" in repr(m)
    assert "weight_drop" not in repr(plain) and "dropout_mode" not in repr(plain)


# -- locked dropout -----------------------------------------------------------------------------

def test_locked_mask_shared_across_steps_not_rows_or_calls():
    from fusedrnn.nn._regularisers import locked_dropout

    p = 0.5
    ones = torch.ones(7, 64, 16, dtype=torch.float64)
    a, b = locked_dropout(ones, p), locked_dropout(ones, p)
    assert torch.equal(a, a[:1].expand_as(a))  # every step the same mask
    assert set(a.unique().tolist()) == {0.0, 1 / (1 - p)}
    rows = a[0]
    assert len({tuple(r.tolist()) for r in rows}) > 32  # rows (sequences) differ
    assert not torch.equal(a, b)  # a new mask per call


def _hand_locked(ref_layers, x, p, seed, lengths=None):
    """AWD-LSTM's LockedDropout between single-layer torch.nn modules, drawn in its way."""
    torch.manual_seed(seed)
    hs = []
    for i, layer in enumerate(ref_layers):
        if lengths is not None:
            y, h = layer(pack_padded_sequence(x, lengths))
            y, _ = pad_packed_sequence(y, total_length=x.shape[0])
        else:
            y, h = layer(x)
        hs.append(h)
        if i < len(ref_layers) - 1:
            y = y * y.new_empty((1, y.shape[1], y.shape[2])).bernoulli_(1 - p) / (1 - p)
        x = y
    return x, hs


def _split_layers(m, tcls):
    """m's layers as single-layer torch.nn modules with m's weights."""
    dirs = 2 if m.bidirectional else 1
    out = []
    for k in range(m.num_layers):
        inp = m.input_size if k == 0 else m.hidden_size * dirs
        layer = tcls(inp, m.hidden_size, bidirectional=m.bidirectional, dtype=torch.float64)
        sd = {n.replace(f"_l{k}", "_l0"): v for n, v in m.state_dict().items() if f"_l{k}" in n}
        layer.load_state_dict(sd)
        out.append(layer)
    return out


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
@pytest.mark.parametrize("form", ["tensor", "batch_first", "packed"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_locked_dropout_matches_hand_loop(kind, form, backend):
    p, seed, T, B = 0.5, 11, 5, 4
    tcls, fcls = KINDS[kind]
    torch.manual_seed(0)
    m = fcls(3, 4, num_layers=3, bidirectional=True, dropout=p, dropout_mode="locked",
             batch_first=form == "batch_first", dtype=torch.float64, backend=backend)
    x = torch.randn(T, B, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 4, 2, 1]) if form == "packed" else None  # sorted: no reordering
    want, hs = _hand_locked(_split_layers(m, tcls), x, p, seed, lengths)
    torch.manual_seed(seed)
    if form == "packed":
        out, _ = m(pack_padded_sequence(x, lengths))
        got, _ = pad_packed_sequence(out, total_length=T)
    elif form == "batch_first":
        got = m(x.transpose(0, 1))[0].transpose(0, 1)
    else:
        got = m(x)[0]
    torch.testing.assert_close(got, want, **T64)
    if form == "tensor":  # the final states are each layer's own, before dropout
        torch.manual_seed(seed)
        h_n = m(x)[1]
        for got_h, want_h in zip(h_n if kind == "lstm" else (h_n,),
                                 hs[-1] if kind == "lstm" else (hs[-1],)):
            torch.testing.assert_close(got_h[-2:], want_h, **T64)
    # and the locked mode really differs from torch.nn's per-element dropout
    if form == "tensor":
        torch.manual_seed(seed)
        m.dropout_mode = "standard"
        assert not torch.allclose(m(x)[0], want)


def test_locked_dropout_eval_is_no_dropout():
    ref, ours = _twins("lstm", num_layers=2, dropout=0.5, dropout_mode="locked")
    ref.eval(), ours.eval()
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **T64)


@pytest.mark.parametrize("bad", ["Locked", "variational", None, 1])
def test_dropout_mode_bad_value(bad):
    with pytest.raises(ValueError, match="dropout_mode must be 'standard'"):
        fusedrnn.LSTM(3, 4, num_layers=2, dropout=0.3, dropout_mode=bad)


# -- MinGRU / MinLSTM reset -----------------------------------------------------------------------

from fusedrnn import MinGRU, MinLSTM  # noqa: E402
from fusedrnn.scan import available_scan_backends  # noqa: E402

MIN_CELLS = [MinGRU, MinLSTM]
SCAN_BACKENDS = [b for b in ("reference", "cpu") if b in available_scan_backends()]


def _g(x):
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def _min_loop(m, x, h0, reset, lengths=None):
    """The paper's equations step by step (f / (f + i) written out for minLSTM), with resets
    applied as the RNN layers' ``(1 - done) * state`` before each step: forward direction, the
    state entering step t is zeroed where reset[:, t]; reverse direction, the state passed from
    t + 1 to t is zeroed where a segment starts at t + 1. x [B, T, I], h0 [L*D, B, H],
    reset [B, T] bool, lengths [B] | None. Returns y [B, T, D*H], h_n."""
    B, T, _ = x.shape
    H, dirs = m.hidden_size, 2 if m.bidirectional else 1
    live = torch.ones(B, T, dtype=torch.bool) if lengths is None else \
        torch.arange(T)[None, :] < lengths[:, None]
    r = reset & live
    inp, h_n = x, []
    for layer in range(m.num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w, bias = getattr(m, "weight_ih" + sfx), getattr(m, "bias_ih" + sfx)
            h = h0[layer * dirs + d]
            out = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                cut = r[:, t] if d == 0 else (r[:, t + 1] if t + 1 < T else torch.zeros(B, dtype=torch.bool))
                h = h * (~cut).to(h.dtype)[:, None]
                k = inp[:, t] @ w.T + bias
                h_tilde = _g(k[:, -H:])
                if isinstance(m, MinGRU):
                    z = torch.sigmoid(k[:, :H])
                    new = (1 - z) * h + z * h_tilde
                else:
                    f, i = torch.sigmoid(k[:, :H]), torch.sigmoid(k[:, H:2 * H])
                    new = f / (f + i) * h + i / (f + i) * h_tilde
                lv = live[:, t, None]
                h = torch.where(lv, new, h)
                out[t] = h * lv
            outs.append(torch.stack(out, 1))
            h_n.append(h)
        inp = torch.cat(outs, -1)
    return inp, torch.stack(h_n)


def _resets(case, B, T, gen):
    if case == "random":
        r = torch.rand(B, T, generator=gen) < 0.3
        r[0, 0] = True
        return r
    r = torch.zeros(B, T, dtype=torch.bool)
    if case == "at0":
        r[:, 0] = True
    elif case == "all_rows_same_step":
        r[:, T // 2] = True
    return r


def _min_setup(cell, H, B, T, seed, **kw):
    """A float64 two-layer bidirectional layer, x [B, T, 3], h0, and a generator for resets."""
    torch.manual_seed(seed)
    m = cell(3, H, num_layers=2, bidirectional=True, **kw).double()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, T, 3, dtype=torch.float64, generator=gen)
    return m, x, torch.randn(4, B, H, dtype=torch.float64, generator=gen), gen


def _assert_all_close(got, want):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, **T64, msg=lambda s: f"tensor {i}: {s}")


def _grads(m, x, h0, fn):
    xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_()
    m.zero_grad()
    y, h_n = fn(xi, hi)
    gen = torch.Generator().manual_seed(3)
    loss = (y * torch.randn(y.shape, dtype=y.dtype, generator=gen)).sum() + \
        (h_n * torch.randn(h_n.shape, dtype=y.dtype, generator=gen)).sum()
    loss.backward()
    return [y, h_n, xi.grad, hi.grad] + [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("layout", ["time_major", "batch_first"])
@pytest.mark.parametrize("case", ["random", "at0", "all_rows_same_step", "none"])
@pytest.mark.parametrize("backend", SCAN_BACKENDS)
@pytest.mark.parametrize("cell", MIN_CELLS, ids=lambda c: c.__name__)
def test_min_reset_matches_loop(cell, backend, case, layout):
    bf = layout == "batch_first"
    B, T = 3, 7
    m, x, h0, gen = _min_setup(cell, 5, B, T, 4, batch_first=bf, backend=backend)
    r = _resets(case, B, T, gen)
    want = _grads(m, x, h0, lambda xi, hi: _min_loop(m, xi, hi, r))
    if bf:
        got = _grads(m, x, h0, lambda xi, hi: m(xi, hi, reset=r.float()))  # 0/1 float
    else:
        got = _grads(m, x, h0, lambda xi, hi: (lambda y, h: (y.transpose(0, 1), h))(
            *m(xi.transpose(0, 1), hi, reset=r.t())))
    _assert_all_close(got, want)
    if case == "none":  # no reset is the plain call, bit for bit
        plain = _grads(m, x, h0, lambda xi, hi: m(xi, hi) if bf else (lambda y, h: (
            y.transpose(0, 1), h))(*m(xi.transpose(0, 1), hi)))
        for a, b in zip(got, plain):
            assert torch.equal(a, b)
    if case == "at0":  # h0 is ignored, and gets no gradient
        assert torch.equal(got[3][0::2], torch.zeros_like(got[3][0::2]))


@pytest.mark.parametrize("log_space", [False, True], ids=["linear", "log"])
@pytest.mark.parametrize("cell", MIN_CELLS, ids=lambda c: c.__name__)
def test_min_reset_with_lengths_and_log_space(cell, log_space):
    B, T = 4, 8
    m, x, h0, gen = _min_setup(cell, 4, B, T, 6, batch_first=True, log_space=log_space)
    lengths = torch.tensor([8, 5, 1, 3])
    r = _resets("random", B, T, gen)
    r[1, 6] = True  # a reset on padding is ignored
    want = _grads(m, x, h0, lambda xi, hi: _min_loop(m, xi, hi, r, lengths))
    got = _grads(m, x, h0, lambda xi, hi: m(xi, hi, lengths=lengths, reset=r))
    _assert_all_close(got, want)


@pytest.mark.parametrize("cell", MIN_CELLS, ids=lambda c: c.__name__)
def test_min_reset_bidirectional_is_segments_run_alone(cell):
    """Independent of the loop above: each segment between resets, run as its own sequence (the
    forward direction from zeros except the first, the reverse from zeros except the last)."""
    torch.manual_seed(8)
    m = cell(3, 4, bidirectional=True, batch_first=True).double()
    T = 9
    x = torch.randn(1, T, 3, dtype=torch.float64)
    h0 = torch.randn(2, 1, 4, dtype=torch.float64)
    r = torch.zeros(1, T, dtype=torch.bool)
    r[0, [3, 4, 7]] = True
    y, h_n = m(x, h0, reset=r)
    bounds = [0, 3, 4, 7, T]
    for k, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        hs = torch.stack([h0[0] if k == 0 else torch.zeros(1, 4, dtype=torch.float64),
                          h0[1] if e == T else torch.zeros(1, 4, dtype=torch.float64)])
        ys, hn_s = m(x[:, s:e], hs)
        torch.testing.assert_close(y[:, s:e], ys, **T64)
        if k == len(bounds) - 2:
            torch.testing.assert_close(h_n[0], hn_s[0], **T64)
        if k == 0:
            torch.testing.assert_close(h_n[1], hn_s[1], **T64)


@pytest.mark.parametrize("cell", MIN_CELLS, ids=lambda c: c.__name__)
def test_min_step_reset_equals_forward(cell):
    torch.manual_seed(9)
    m = cell(3, 4, num_layers=2).double()
    x, h0 = torch.randn(6, 2, 3, dtype=torch.float64), torch.randn(2, 2, 4, dtype=torch.float64)
    r = torch.tensor([[1, 0], [0, 0], [0, 1], [1, 1], [0, 0], [0, 1]], dtype=torch.bool)
    y, h_n = m(x, h0, reset=r)
    h, ys = h0, []
    for t in range(6):
        y_t, h = m.step(x[t], h, reset=r[t].float())
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys), y, **T64)
    torch.testing.assert_close(h, h_n, **T64)


def test_min_reset_triton_scan():
    tr = pytest.importorskip("fusedrnn.scan.triton")
    if tr.unavailable() is not None:
        pytest.skip(f"triton scan: {tr.unavailable()}")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(10)
    m = MinGRU(3, 4, bidirectional=True, backend="triton").double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    h0 = torch.randn(2, 2, 4, dtype=torch.float64)
    r = torch.zeros(2, 6, dtype=torch.bool)
    r[0, 0], r[1, 3], r[0, 4] = True, True, True
    want = _grads(m, x, h0, lambda xi, hi: _min_loop(m, xi, hi, r))
    md = m.to(dev)
    got = _grads(md, x.to(dev), h0.to(dev), lambda xi, hi: (lambda y, h: (y.transpose(0, 1), h))(
        *md(xi.transpose(0, 1), hi, reset=r.t().to(dev))))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, **T64)


def test_min_reset_errors():
    m = MinGRU(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"reset must have shape \[T, B\] = \(5, 2\)"):
        m(x, reset=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="reset must be a tensor"):
        m(x, reset=[[0, 1]])
    packed = pack_padded_sequence(x, torch.tensor([5, 3]))
    with pytest.raises(ValueError, match="reset= is not supported with a PackedSequence"):
        m(packed, reset=torch.zeros(5, 2, dtype=torch.bool))
    # unbatched: [T]
    y, _ = m(x[:, 0], reset=torch.tensor([0, 0, 1, 0, 0]))
    torch.testing.assert_close(y, m(x[:, :1], reset=torch.tensor([[0], [0], [1], [0], [0]]))[0][:, 0])
