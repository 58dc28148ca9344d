"""The drop-in layers' API beyond numerics: construction, state dicts, weight changes,
serialisation, special inputs, dropout and independence of batch rows."""

import copy
import io

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from conftest import TOL
from layer_utils import CELLS, twins

LAYERS = [("RNN", {}), ("RNN", {"nonlinearity": "relu"}), ("LSTM", {}),
          ("LSTM", {"proj_size": 3}), ("GRU", {})]
LAYER_IDS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]
ALL_CLASSES = [("RNN", (4, 6, 2)), ("LSTM", (4, 6, 2)), ("GRU", (4, 6, 2)),
               ("RNNCell", (4, 6)), ("LSTMCell", (4, 6)), ("GRUCell", (4, 6))]


@pytest.mark.parametrize("name,args", ALL_CLASSES, ids=[c for c, _ in ALL_CLASSES])
def test_same_init_params_repr_and_state_dict(name, args):
    kw = {"bias": False} if name == "GRUCell" else {}
    torch.manual_seed(123)
    ref = getattr(torch.nn, name)(*args, **kw)
    torch.manual_seed(123)
    ours = getattr(fusedrnn, name)(*args, **kw)
    assert isinstance(ours, getattr(torch.nn, name))
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (n, a), (_, b) in zip(ref.named_parameters(), ours.named_parameters(), strict=True):
        assert a.shape == b.shape and torch.equal(a, b), n
    assert repr(ours) == repr(ref)
    # both directions, strict
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert "backend='reference'" in repr(getattr(fusedrnn, name)(*args, backend="reference"))


@pytest.mark.parametrize("kind,kw", LAYERS, ids=LAYER_IDS)
def test_attributes_match_torch(kind, kw):
    ref = getattr(torch.nn, kind)(3, 5, 2, batch_first=True, dropout=0.25, **kw)
    ours = getattr(fusedrnn, kind)(3, 5, 2, batch_first=True, dropout=0.25, **kw)
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                 "dropout", "bidirectional", "proj_size", "_flat_weights_names"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    if kind == "RNN":
        assert ours.nonlinearity == ref.nonlinearity


def test_backend_choice_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        fusedrnn.LSTM(3, 4, backend="cudnn")
    with pytest.raises(ValueError, match="backend must be one of"):
        fusedrnn.GRUCell(3, 4, backend=None)
    missing = [b for b in ("cpu", "triton", "cuda") if b not in fusedrnn.available_backends()]
    for b in missing:
        with pytest.raises(RuntimeError, match=f"backend '{b}' is not available"):
            fusedrnn.GRU(3, 4, backend=b)


def test_backend_on_wrong_device_errors():
    avail = fusedrnn.available_backends()
    if "cuda" in avail and not torch.cuda.is_available():
        m = fusedrnn.GRU(3, 4, backend="cuda")
        with pytest.raises(RuntimeError, match="does not run on cpu tensors"):
            m(torch.randn(2, 1, 3))
    m = fusedrnn.GRU(3, 4, backend="reference")
    assert m(torch.randn(2, 1, 3))[0].shape == (2, 1, 4)


def _out(m, x, hx=None):
    y, h = m(x, hx)
    return y, (h if isinstance(h, tuple) else (h,))


@pytest.mark.parametrize("how", ["inplace", "replace", "functional_call"])
def test_weight_changes_take_effect(backend, how):
    ref, ours = twins("lstm", 3, 4, backend=backend)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    new_w = torch.randn_like(ref.weight_hh_l0)
    if how == "inplace":
        with torch.no_grad():
            ref.weight_hh_l0.copy_(new_w)
            ours.weight_hh_l0.copy_(new_w)
        got = _out(ours, x)
    elif how == "replace":
        ref.weight_hh_l0 = torch.nn.Parameter(new_w.clone())
        ours.weight_hh_l0 = torch.nn.Parameter(new_w.clone())
        got = _out(ours, x)
    else:
        params = dict(ours.named_parameters())
        params["weight_hh_l0"] = new_w
        got = torch.func.functional_call(ours, params, (x,))
        got = (got[0], got[1])
        with torch.no_grad():
            ref.weight_hh_l0.copy_(new_w)
    want = _out(ref, x)
    torch.testing.assert_close(got[0], want[0], **TOL[torch.float64])
    torch.testing.assert_close(got[1], want[1], **TOL[torch.float64])


def test_deepcopy_and_save_load(backend, tmp_path):
    _, ours = twins("gru", 3, 4, backend=backend, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    want = ours(x)
    clone = copy.deepcopy(ours)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for m in (clone, loaded):
        assert type(m) is fusedrnn.GRU and m.backend == backend
        got = m(x)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)


@pytest.mark.parametrize("cell", list(CELLS))
def test_batch_size_zero(backend, cell):
    ref, ours = twins(cell, 3, 4, backend=backend, num_layers=2, bidirectional=True)
    x = torch.randn(5, 0, 3, dtype=torch.float64)
    y_ref, h_ref = ref(x)
    y, h = ours(x)
    assert y.shape == y_ref.shape
    h, h_ref = (h, h_ref) if isinstance(h, tuple) else ((h,), (h_ref,))
    assert [t.shape for t in h] == [t.shape for t in h_ref]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input(backend, cell, batch_first):
    ref, ours = twins(cell, 3, 4, backend=backend, num_layers=2, batch_first=batch_first)
    x = torch.randn(6, 3, dtype=torch.float64)
    hx = tuple(h[:, 0] for h in (ref(x.unsqueeze(1))[1] if cell.startswith("lstm") else
                                 (ref(x.unsqueeze(1))[1],)))
    hx = hx if cell.startswith("lstm") else hx[0]
    for h in (None, hx):
        a, b = _out(ref, x, h), _out(ours, x, h)
        torch.testing.assert_close(b[0], a[0], **TOL[torch.float64])
        for s, t in zip(a[1], b[1], strict=True):
            assert s.shape == t.shape and s.dim() == 2
            torch.testing.assert_close(t, s, **TOL[torch.float64])


def test_packed_output_metadata(backend):
    _, ours = twins("lstm", 3, 4, backend=backend, bidirectional=True)
    lengths = torch.tensor([2, 5, 1, 4])
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, (h, c) = ours(packed)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    assert torch.equal(out.sorted_indices, packed.sorted_indices)
    assert torch.equal(out.unsorted_indices, packed.unsorted_indices)
    # h_n in the original batch order: each sequence alone gives its own row
    for b in range(4):
        _, (hb, cb) = ours(x[: lengths[b], b : b + 1])
        torch.testing.assert_close(h[:, b], hb[:, 0], **TOL[torch.float64])
        torch.testing.assert_close(c[:, b], cb[:, 0], **TOL[torch.float64])


@pytest.mark.parametrize("cell", list(CELLS))
def test_each_sample_alone_equals_its_row(backend, cell):
    _, ours = twins(cell, 3, 4, backend=backend, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    y, h = _out(ours, x)
    for b in range(3):
        yb, hb = _out(ours, x[:, b : b + 1])
        torch.testing.assert_close(y[:, b], yb[:, 0], **TOL[torch.float64])
        for s, t in zip(h, hb, strict=True):
            torch.testing.assert_close(s[:, b], t[:, 0], **TOL[torch.float64])


@pytest.mark.parametrize("cell", list(CELLS))
def test_padding_values_do_not_matter(backend, cell):
    _, ours = twins(cell, 3, 4, backend=backend, num_layers=2, bidirectional=True)
    lengths = torch.tensor([6, 2, 4])
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    x2 = x.clone()
    for b, n in enumerate(lengths):
        x2[n:, b] = 1e3 * torch.randn_like(x2[n:, b])
    outs = [ours(pack_padded_sequence(v, lengths, enforce_sorted=False)) for v in (x, x2)]
    torch.testing.assert_close(outs[1][0].data, outs[0][0].data, rtol=0, atol=0)
    padded, _ = pad_packed_sequence(outs[0][0])
    assert padded.shape == (6, 3, 2 * (ours.proj_size or ours.hidden_size))


def test_dropout_train_eval(backend):
    torch.manual_seed(0)
    m = fusedrnn.GRU(3, 8, num_layers=3, dropout=0.5, dtype=torch.float64, backend=backend)
    plain = fusedrnn.GRU(3, 8, num_layers=3, dropout=0.0, dtype=torch.float64, backend=backend)
    plain.load_state_dict(m.state_dict())
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    m.eval()
    e1, e2 = m(x)[0], m(x)[0]
    assert torch.equal(e1, e2)
    torch.testing.assert_close(e1, plain(x)[0], rtol=0, atol=0)
    m.train()
    t1, t2 = m(x)[0], m(x)[0]
    assert not torch.equal(t1, t2) and not torch.equal(t1, e1)
    m.dropout = 0.0  # changed at run time: train mode now equals eval mode
    torch.testing.assert_close(m(x)[0], e1, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_gradcheck_and_gradgradcheck(backend, kind):
    torch.manual_seed(0)
    m = getattr(fusedrnn, kind)(2, 3, dtype=torch.float64, backend=backend,
                                 bidirectional=True)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    params = {n: p.detach().requires_grad_() for n, p in m.named_parameters()}
    names = list(params)

    def f(x, *ps):
        y, h = torch.func.functional_call(m, dict(zip(names, ps, strict=True)), (x,))
        h = h if isinstance(h, tuple) else (h,)
        return (y, *h)

    inputs = (x, *params.values())
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


class _Tagger(torch.nn.Module):
    """A small sequence tagger of the kind users already have, built on torch.nn.LSTM."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 6)
        self.rnn = torch.nn.LSTM(6, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(16, 5)

    def forward(self, tokens):
        return self.head(self.rnn(self.emb(tokens))[0])


def test_swap_into_existing_model_with_old_state_dict(backend):
    torch.manual_seed(0)
    old = _Tagger().double()
    state = old.state_dict()
    new = _Tagger().double()
    new.rnn = fusedrnn.LSTM(6, 8, num_layers=2, batch_first=True, bidirectional=True,
                            dtype=torch.float64, backend=backend)
    new.load_state_dict(state, strict=True)
    tokens = torch.randint(0, 20, (3, 9))
    outs, grads = [], []
    for m in (old, new):
        out = m(tokens)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), list(m.parameters())))
    torch.testing.assert_close(outs[1], outs[0], **TOL[torch.float64])
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(b, a, **TOL[torch.float64])
