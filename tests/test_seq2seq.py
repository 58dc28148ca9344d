"""fusedrnn.models.Seq2Seq: teacher forcing, greedy vs beam, variable-length sources."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fusedrnn.models import Seq2Seq
from fusedrnn.models.beam import beam_search

TOL64 = dict(rtol=1e-10, atol=1e-12)  # float64 row of the tolerance table
PAD, BOS, EOS = 0, 1, 2
CELLS = ["RNN", "LSTM", "GRU"]
ATTN = [None, "dot", "general"]


def _model(cell, attention, seed=0, num_layers=1, V_src=11, V_tgt=9):
    torch.manual_seed(seed)
    return Seq2Seq(V_src, V_tgt, 6, 8, cell=cell, attention=attention, num_layers=num_layers,
                   pad_id=PAD, bos_id=BOS, eos_id=EOS).double()


def _batch(seed=0, B=5, S=7, T=6, V_src=11, V_tgt=9):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([S, 3, 5, 1, 4][:B])
    src = torch.randint(3, V_src, (B, S), generator=g)
    src[torch.arange(S).unsqueeze(0) >= lengths.unsqueeze(1)] = PAD
    tgt = torch.randint(3, V_tgt, (B, T), generator=g)
    return src, lengths, tgt


def _record_decoder_inputs(model):
    seen = []
    handle = model.tgt_emb.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    return seen, handle


@pytest.mark.parametrize("attention", ATTN, ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_teacher_forcing_feeds_the_shifted_targets(cell, attention):
    model = _model(cell, attention)
    src, lengths, tgt = _batch()
    seen, handle = _record_decoder_inputs(model)
    out = model(src, lengths, tgt, teacher_forcing_ratio=1.0)
    handle.remove()
    shifted = torch.cat([torch.full((tgt.size(0), 1), BOS), tgt[:, :-1]], dim=1)
    fed = torch.cat([s.reshape(tgt.size(0), -1) for s in seen], dim=1)  # what the embedding read
    assert torch.equal(fed, shifted)
    assert torch.equal(out.decoder_inputs, shifted)
    # the one-call teacher-forced decoder equals stepping it by hand on the gold tokens
    enc_out, state, mask = model.encode(src, lengths)
    keys = None if model.attention is None else model.attention.keys(enc_out)
    for t in range(tgt.size(1)):
        logits, state, _ = model.decode_step(shifted[:, t], state, keys, enc_out, mask)
        torch.testing.assert_close(out.logits[:, t], logits, **TOL64)


@pytest.mark.parametrize("cell", CELLS)
def test_free_running_feeds_back_its_own_argmax(cell):
    model = _model(cell, "general", seed=3)
    src, lengths, tgt = _batch(seed=3)
    seen, handle = _record_decoder_inputs(model)
    out = model(src, lengths, tgt, teacher_forcing_ratio=0.0)
    handle.remove()
    fed = torch.cat(seen, dim=1)
    assert torch.equal(fed, out.decoder_inputs)
    assert torch.equal(fed[:, 0], torch.full((src.size(0),), BOS))
    assert torch.equal(fed[:, 1:], out.logits[:, :-1].argmax(-1))


@pytest.mark.parametrize("attention", ATTN, ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_beam_width_one_is_greedy(cell, attention):
    ended = ran_out = 0
    for seed, eos_bias in enumerate([0.0, 0.3, 0.6, 1.5]):
        model = _model(cell, attention, seed=seed, num_layers=2)
        with torch.no_grad():  # make EOS likely enough that some rows stop early
            model.out.bias[EOS] += eos_bias
        src, lengths, _ = _batch(seed=seed)
        greedy = model.greedy_decode(src, lengths, max_len=6)
        beam = model.beam_decode(src, lengths, max_len=6, beam_width=1)
        assert torch.equal(beam, greedy)
        has_eos = (greedy == EOS).any(1)
        ended += int(has_eos.sum())
        ran_out += int((~has_eos).sum())
    assert ended and ran_out, "the cases should cover both stopping at EOS and at max_len"


def test_beam_search_finds_the_best_sequence_by_brute_force():
    """A wide enough beam is exhaustive; compare with enumerating every sequence."""
    V, max_len = 4, 3  # tokens 0, 1, EOS=2, 3
    g = torch.Generator().manual_seed(0)
    table = torch.log_softmax(torch.randn(V + 1, V, generator=g, dtype=torch.float64), -1)

    def step(tokens, state):  # a Markov chain: log p(next | last); BOS is row V
        return table[tokens], state.index_select(1, torch.zeros(len(tokens), dtype=torch.long)) \
            if state.size(1) != len(tokens) else state

    def score(seq):
        prev, s = V, 0.0
        for tok in seq:
            s += float(table[prev, tok])
            prev = tok
        return s

    candidates = [list(p) + [EOS] for n in range(max_len) for p in
                  itertools.product([t for t in range(V) if t != EOS], repeat=n)]
    candidates += [list(p) for p in itertools.product([t for t in range(V) if t != EOS],
                                                      repeat=max_len)]
    best = max(candidates, key=score)
    found = beam_search(step, torch.zeros(1, 1, 1), V, EOS, max_len, beam_width=len(candidates))
    assert found == best
    assert math.isclose(score(found), score(best), rel_tol=1e-12)


@pytest.mark.parametrize("attention", ATTN, ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_variable_length_sources(cell, attention):
    model = _model(cell, attention, num_layers=2)
    src, lengths, tgt = _batch()
    B, S = src.shape
    out = model(src, lengths, tgt)
    assert out.logits.shape == (B, tgt.size(1), 9)
    if attention is not None:
        assert out.attention.shape == (B, tgt.size(1), S)
        pad = torch.arange(S).unsqueeze(0) >= lengths.unsqueeze(1)  # [B, S]
        assert torch.all(out.attention.masked_select(pad.unsqueeze(1)) == 0)
    # each row equals that source alone, unpadded: padding neither leaks nor shifts anything
    for b in range(B):
        n = int(lengths[b])
        alone = model(src[b:b + 1, :n], lengths[b:b + 1], tgt[b:b + 1])
        torch.testing.assert_close(out.logits[b:b + 1], alone.logits, **TOL64)
    # garbage in the padding changes nothing
    noisy = src.clone()
    noisy[src == PAD] = 5
    torch.testing.assert_close(model(noisy, lengths, tgt).logits, out.logits, **TOL64)
    greedy = model.greedy_decode(src, lengths, max_len=4)
    assert greedy.shape[0] == B and greedy.shape[1] <= 4


def test_errors_name_the_argument():
    model = _model("GRU", None)
    src, lengths, tgt = _batch()
    with pytest.raises(ValueError, match="src_lengths"):
        model(src, lengths[:2], tgt)
    with pytest.raises(ValueError, match="teacher_forcing_ratio"):
        model(src, lengths, tgt, teacher_forcing_ratio=1.5)
    with pytest.raises(ValueError, match="attention score"):
        Seq2Seq(5, 5, 4, 4, attention="additive")
    with pytest.raises(ValueError, match="cell must be"):
        Seq2Seq(5, 5, 4, 4, cell="Transformer")
