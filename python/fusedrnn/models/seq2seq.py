"""An RNN encoder-decoder with optional Luong attention, teacher forcing, greedy and beam search.

Shapes follow ``batch_first``: token tensors are [B, S] (source) and [B, T] (target), long.
Targets hold the output tokens without BOS and end with EOS, padded with ``pad_id``; the
decoder reads ``[BOS, tgt_0, ..., tgt_{T-2}]`` (the targets shifted right) under teacher forcing.

Attention is Luong et al. (2015) "global" attention without input feeding: the attentional state
h̃_t = tanh(W_c [c_t; h_t]) is read out but not fed back, so a fully teacher-forced decoder runs
its whole target sequence in one fused layer call and attends over all steps at once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .beam import beam_search

_LAYERS = ("RNN", "LSTM", "GRU", "MinGRU", "MinLSTM")


class Seq2SeqOutput(NamedTuple):
    """logits [B, T, V]; decoder_inputs [B, T] (the tokens the decoder actually read);
    attention [B, T, S] or None."""

    logits: Tensor
    decoder_inputs: Tensor
    attention: Tensor | None


class LuongAttention(nn.Module):
    """Luong global attention, score ``"dot"`` (h_t·h̄_s) or ``"general"`` (h_t·W_a h̄_s).

    Args:
        hidden_size: H of the decoder and encoder states.
        score: "dot" | "general".
    """

    def __init__(self, hidden_size: int, score: str = "general"):
        super().__init__()
        if score not in ("dot", "general"):
            raise ValueError(f"attention score must be 'dot' or 'general', got {score!r}")
        self.score = score
        self.w_a = nn.Linear(hidden_size, hidden_size, bias=False) if score == "general" else None
        self.w_c = nn.Linear(2 * hidden_size, hidden_size, bias=False)

    def keys(self, enc_out: Tensor) -> Tensor:
        """[B, S, H] -> [B, S, H]; computed once per source, reused at every decoder step."""
        return enc_out if self.w_a is None else self.w_a(enc_out)

    def forward(self, dec: Tensor, keys: Tensor, enc_out: Tensor, src_mask: Tensor):
        """dec [B, T, H], keys/enc_out [B, S, H], src_mask [B, S] bool (True = real token).

        Returns (h̃ [B, T, H], weights [B, T, S]).
        """
        scores = torch.bmm(dec, keys.transpose(1, 2))  # [B, T, S]
        scores = scores.masked_fill(~src_mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights, enc_out)  # [B, T, H]
        return torch.tanh(self.w_c(torch.cat([context, dec], dim=-1))), weights


def _layer_class(cell):
    import fusedrnn

    if isinstance(cell, str):
        if cell not in _LAYERS or not hasattr(fusedrnn, cell):
            avail = [n for n in _LAYERS if hasattr(fusedrnn, n)]
            raise ValueError(f"cell must be one of {avail} or a layer class, got {cell!r}")
        return getattr(fusedrnn, cell)
    return cell


class Seq2Seq(nn.Module):
    """Encoder-decoder over token sequences with any fusedrnn layer.

    Args:
        src_vocab, tgt_vocab: vocabulary sizes.
        emb_dim: embedding size of both sides.
        hidden_size: H of encoder and decoder (the encoder's final state starts the decoder).
        cell: "RNN" | "LSTM" | "GRU" (fusedrnn's layers, also "MinGRU"/"MinLSTM" where they
            exist) or any class with torch.nn.RNN's constructor and calling convention.
        num_layers: layers of encoder and decoder.
        attention: None | "dot" | "general" (Luong).
        dropout: dropout on embeddings and between layers.
        pad_id, bos_id, eos_id: special target token ids (pad_id is also the source padding).
        layer_kwargs: extra keyword arguments for both layers, e.g. ``{"backend": "cpu"}``.

    Example::

        >>> m = Seq2Seq(30, 20, 16, 64, cell="GRU", attention="general")
        >>> out = m(src, src_lengths, tgt, teacher_forcing_ratio=0.5)   # out.logits [B, T, 20]
        >>> tokens = m.greedy_decode(src, src_lengths, max_len=12)      # [B, <=12]
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, emb_dim: int, hidden_size: int, *,
                 cell="GRU", num_layers: int = 1, attention: str | None = None,
                 dropout: float = 0.0, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2,
                 layer_kwargs: dict | None = None):
        super().__init__()
        layer = _layer_class(cell)
        kw = dict(num_layers=num_layers, batch_first=True, **(layer_kwargs or {}))
        if num_layers > 1:
            kw["dropout"] = dropout
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.tgt_vocab = tgt_vocab
        self.src_emb = nn.Embedding(src_vocab, emb_dim, padding_idx=pad_id)
        self.tgt_emb = nn.Embedding(tgt_vocab, emb_dim, padding_idx=pad_id)
        self.encoder = layer(emb_dim, hidden_size, **kw)
        self.decoder = layer(emb_dim, hidden_size, **kw)
        self.attention = None if attention is None else LuongAttention(hidden_size, attention)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, tgt_vocab)

    # -- encoder ---------------------------------------------------------------------------

    def encode(self, src: Tensor, src_lengths: Tensor):
        """src [B, S] long, src_lengths [B] -> (enc_out [B, S, H] zero past each length,
        final state as the layer returns it, src_mask [B, S] bool)."""
        if src.dim() != 2:
            raise ValueError(f"src must be [B, S] token ids, got shape {tuple(src.shape)}")
        lengths = torch.as_tensor(src_lengths).to("cpu", torch.int64)
        if lengths.shape != (src.size(0),):
            raise ValueError(f"src_lengths must have shape ({src.size(0)},), got "
                             f"{tuple(lengths.shape)}")
        if int(lengths.min()) < 1 or int(lengths.max()) > src.size(1):
            raise ValueError(f"src_lengths must lie in [1, {src.size(1)}], got {lengths.tolist()}")
        emb = self.drop(self.src_emb(src))  # [B, S, E]
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        enc_out, state = self.encoder(packed)
        enc_out, _ = pad_packed_sequence(enc_out, batch_first=True, total_length=src.size(1))
        mask = torch.arange(src.size(1)).unsqueeze(0) < lengths.unsqueeze(1)  # [B, S]
        return enc_out, state, mask.to(src.device)

    # -- decoder ---------------------------------------------------------------------------

    def _readout(self, dec: Tensor, keys, enc_out, mask):
        """dec [B, T, H] -> (logits [B, T, V], attention weights [B, T, S] | None)."""
        weights = None
        if self.attention is not None:
            dec, weights = self.attention(dec, keys, enc_out, mask)
        return self.out(self.drop(dec)), weights

    def decode_step(self, tokens: Tensor, state, keys, enc_out, mask):
        """One decoder step: tokens [B] -> (logits [B, V], new state, weights [B, S] | None)."""
        dec, state = self.decoder(self.drop(self.tgt_emb(tokens.unsqueeze(1))), state)
        logits, weights = self._readout(dec, keys, enc_out, mask)
        return logits[:, 0], state, None if weights is None else weights[:, 0]

    def forward(self, src: Tensor, src_lengths: Tensor, tgt: Tensor,
                teacher_forcing_ratio: float = 1.0) -> Seq2SeqOutput:
        """Decode ``tgt.size(1)`` steps for training.

        Args:
            src [B, S], src_lengths [B], tgt [B, T] (no BOS, EOS-terminated, padded).
            teacher_forcing_ratio: probability, drawn per sequence and step, that the decoder
                reads the true previous target token rather than its own greedy prediction.
                1.0 runs the whole decoder in one layer call; 0.0 is free running.
        Returns:
            ``Seq2SeqOutput(logits [B, T, V], decoder_inputs [B, T], attention [B, T, S]|None)``.
        """
        if not 0.0 <= teacher_forcing_ratio <= 1.0:
            raise ValueError(
                f"teacher_forcing_ratio must lie in [0, 1], got {teacher_forcing_ratio}")
        enc_out, state, mask = self.encode(src, src_lengths)
        keys = None if self.attention is None else self.attention.keys(enc_out)
        B, T = tgt.shape
        bos = tgt.new_full((B, 1), self.bos_id)
        if teacher_forcing_ratio >= 1.0:
            inputs = torch.cat([bos, tgt[:, :-1]], dim=1)  # the targets shifted right
            dec, _ = self.decoder(self.drop(self.tgt_emb(inputs)), state)
            logits, weights = self._readout(dec, keys, enc_out, mask)
            return Seq2SeqOutput(logits, inputs, weights)
        tok = bos[:, 0]
        inputs, logits, weights = [], [], []
        for t in range(T):
            inputs.append(tok)
            step_logits, state, w = self.decode_step(tok, state, keys, enc_out, mask)
            logits.append(step_logits)
            weights.append(w)
            forced = torch.rand(B, device=tgt.device) < teacher_forcing_ratio
            tok = torch.where(forced, tgt[:, t], step_logits.argmax(-1))
        attn = None if self.attention is None else torch.stack(weights, 1)
        return Seq2SeqOutput(torch.stack(logits, 1), torch.stack(inputs, 1), attn)

    def loss(self, out: Seq2SeqOutput, tgt: Tensor) -> Tensor:
        """Token-level cross entropy, padding ignored."""
        return F.cross_entropy(out.logits.reshape(-1, self.tgt_vocab), tgt.reshape(-1),
                               ignore_index=self.pad_id)

    # -- inference -------------------------------------------------------------------------

    @torch.no_grad()
    def greedy_decode(self, src: Tensor, src_lengths: Tensor, max_len: int) -> Tensor:
        """Argmax decoding: [B, S] -> tokens [B, L] with L <= max_len. Each row ends with its
        first EOS (kept) followed by ``pad_id``; decoding stops once every row has an EOS."""
        enc_out, state, mask = self.encode(src, src_lengths)
        keys = None if self.attention is None else self.attention.keys(enc_out)
        B = src.size(0)
        tok = src.new_full((B,), self.bos_id)
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        out = []
        for _ in range(max_len):
            logits, state, _ = self.decode_step(tok, state, keys, enc_out, mask)
            tok = logits.argmax(-1)
            out.append(torch.where(done, torch.full_like(tok, self.pad_id), tok))
            done |= tok == self.eos_id
            if bool(done.all()):
                break
        return torch.stack(out, 1)

    @torch.no_grad()
    def beam_decode(self, src: Tensor, src_lengths: Tensor, max_len: int, beam_width: int = 4,
                    length_penalty: float = 0.0) -> Tensor:
        """Beam search per source; returns tokens [B, L] padded like ``greedy_decode``.

        Width 1 is greedy decoding. See ``fusedrnn.models.beam.beam_search`` for the rules.
        """
        enc_out, state, mask = self.encode(src, src_lengths)
        keys = None if self.attention is None else self.attention.keys(enc_out)
        seqs = []
        for b in range(src.size(0)):
            sl = slice(b, b + 1)
            st = tuple(s[:, sl] for s in state) if isinstance(state, tuple) else state[:, sl]
            k = None if keys is None else keys[sl]
            seqs.append(beam_search(
                lambda tok, s, k=k, e=enc_out[sl], m=mask[sl]: self._beam_step(tok, s, k, e, m),
                st, self.bos_id, self.eos_id, max_len, beam_width, length_penalty,
            ))
        width = max(len(s) for s in seqs)
        out = src.new_full((len(seqs), width), self.pad_id)
        for b, s in enumerate(seqs):
            out[b, : len(s)] = torch.tensor(s, dtype=out.dtype)
        return out

    def _beam_step(self, tokens, state, keys, enc_out, mask):
        """decode_step for K hypotheses of one source (its encoding broadcast over K)."""
        K = tokens.size(0)
        exp = lambda t: None if t is None else t.expand(K, *t.shape[1:])  # noqa: E731
        logits, state, _ = self.decode_step(tokens, state, exp(keys), exp(enc_out), exp(mask))
        return torch.log_softmax(logits.float(), -1), state
