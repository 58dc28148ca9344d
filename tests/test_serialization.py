"""Saving and loading the modern way: ``torch.load(weights_only=True)`` of whole models (the
pytorch/examples word_language_model flow), state_dicts, and ``copy.deepcopy``."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import fusedrnn

MODULES = {
    "RNN": lambda b: fusedrnn.RNN(4, 5, num_layers=2, nonlinearity="relu", backend=b),
    "LSTM": lambda b: fusedrnn.LSTM(4, 5, bidirectional=True, proj_size=3, backend=b),
    "GRU": lambda b: fusedrnn.GRU(4, 5, batch_first=True, backend=b),
    "RNNCell": lambda b: fusedrnn.RNNCell(4, 5, backend=b),
    "LSTMCell": lambda b: fusedrnn.LSTMCell(4, 5, backend=b),
    "GRUCell": lambda b: fusedrnn.GRUCell(4, 5, backend=b),
    "MinGRU": lambda b: fusedrnn.MinGRU(4, 5, num_layers=2),
    "MinLSTM": lambda b: fusedrnn.MinLSTM(4, 5, bidirectional=True),
}


def _input(name):
    return torch.randn(3, 4) if name.endswith("Cell") else torch.randn(2, 3, 4)


def _flat(out):
    if not isinstance(out, tuple):
        return [out]
    return [t for o in out for t in (o if isinstance(o, tuple) else (o,))]


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", list(MODULES))
def test_whole_module_weights_only(name, backend):
    torch.manual_seed(0)
    m = MODULES[name](backend).eval()
    x = _input(name)
    loaded = _roundtrip(m)  # no safe_globals needed: fusedrnn registers its classes
    assert type(loaded) is type(m)
    assert repr(loaded) == repr(m)
    assert getattr(loaded, "backend", None) == getattr(m, "backend", None)
    for got, want in zip(_flat(loaded(x)), _flat(m(x)), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(MODULES))
def test_state_dict_weights_only_and_deepcopy(name, backend):
    torch.manual_seed(0)
    m = MODULES[name](backend)
    x = _input(name)
    want = _flat(m(x))
    torch.manual_seed(1)
    fresh = MODULES[name](backend)
    fresh.load_state_dict(_roundtrip(m.state_dict()))
    clone = copy.deepcopy(m)
    for other in (fresh, clone):
        for got, w in zip(_flat(other(x)), want, strict=True):
            torch.testing.assert_close(got, w, rtol=0, atol=0)
    # the copy owns its parameters: changing them leaves the original alone
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)
    for got, w in zip(_flat(m(x)), want, strict=True):
        torch.testing.assert_close(got, w, rtol=0, atol=0)


class RNNModel(nn.Module):
    """pytorch/examples word_language_model's model: encoder, recurrent layer, decoder."""

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = getattr(fusedrnn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, input, hidden=None):
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        return self.decoder(self.drop(output)), hidden


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU", "RNN"])
def test_word_language_model_save_load(rnn_type, tmp_path):
    """Train, ``torch.save(model)``, then load as the example does: ``torch.load`` (weights_only
    by default) under ``safe_globals`` listing the model's class and torch.nn's classes only."""
    torch.manual_seed(0)
    model = RNNModel(rnn_type, 20, 6, 8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = torch.randint(0, 20, (7, 3))
    for _ in range(3):
        opt.zero_grad()
        out, _ = model(data[:-1])
        nn.functional.cross_entropy(out.view(-1, 20), data[1:].reshape(-1)).backward()
        opt.step()
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:
        torch.save(model, f)
    safe = [RNNModel, nn.Dropout, nn.Embedding, nn.Linear, nn.LSTM, nn.GRU, nn.RNN]
    with open(path, "rb") as f, torch.serialization.safe_globals(safe):
        loaded = torch.load(f)
    assert isinstance(loaded.rnn, getattr(fusedrnn, rnn_type))
    model.eval(), loaded.eval()
    for got, want in zip(_flat(loaded(data)), _flat(model(data)), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_loaded_backend_name_is_checked():
    """A file can set ``backend`` to any string; the layer accepts only its own list at run time."""
    m = fusedrnn.GRU(4, 5)
    m.backend = "os.system"
    loaded = _roundtrip(m)
    with pytest.raises(ValueError, match="backend must be one of"):
        loaded(torch.randn(2, 3, 4))
