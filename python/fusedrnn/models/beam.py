"""Beam search over one source, independent of the model behind it.

The beam shrinks as hypotheses finish: at every step the ``k_alive`` best extensions of the
``k_alive`` live hypotheses are kept, those ending in EOS move to the finished list, and
``k_alive`` becomes ``beam_width - len(finished)``. Search stops when no hypothesis is alive or
after ``max_len`` tokens (live hypotheses then count as finished). With width 1 this is exactly
greedy decoding: the one hypothesis always takes the argmax token and stops at its first EOS.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def _select(state, idx: Tensor):
    """Reorder a recurrent state [L, K, H] (or a tuple of them) along its batch dim."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, idx) for s in state)
    return state.index_select(1, idx)


def beam_search(step: Callable, state, bos_id: int, eos_id: int, max_len: int,
                beam_width: int, length_penalty: float = 0.0) -> list[int]:
    """Best token sequence for one source.

    Args:
        step: ``step(tokens [K], state) -> (log_probs [K, V], new_state)`` for K hypotheses;
            states are [L, K, H] or tuples of them (torch.nn's RNN state layout).
        state: the initial state with K = 1.
        bos_id, eos_id: start and end tokens.
        max_len: most tokens generated (EOS included).
        beam_width: k >= 1.
        length_penalty: ranks finished hypotheses by ``score / len**length_penalty``; 0 ranks
            by the summed log-probability.
    Returns:
        The tokens of the best hypothesis, its EOS included if it produced one.
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    device = state[0].device if isinstance(state, tuple) else state.device
    tokens = torch.full((1,), bos_id, dtype=torch.long, device=device)  # last token per hyp
    history: list[list[int]] = [[]]
    scores = torch.zeros(1, dtype=torch.float64, device=device)  # [K] summed log-probs
    finished: list[tuple[float, list[int]]] = []
    for _ in range(max_len):
        k_alive = beam_width - len(finished)
        logp, state = step(tokens, state)  # [K, V]
        V = logp.size(1)
        cand = (scores.unsqueeze(1) + logp.double()).flatten()  # [K * V]
        top_scores, top_idx = cand.topk(min(k_alive, cand.numel()))
        keep_src, keep_tok, keep_score = [], [], []
        for s, i in zip(top_scores.tolist(), top_idx.tolist()):
            src, tok = divmod(i, V)
            seq = history[src] + [tok]
            if tok == eos_id:
                finished.append((s, seq))
            else:
                keep_src.append(src)
                keep_tok.append(tok)
                keep_score.append(s)
        if not keep_src:
            break
        idx = torch.tensor(keep_src, device=device)
        state = _select(state, idx)
        history = [history[i] + [t] for i, t in zip(keep_src, keep_tok)]
        tokens = torch.tensor(keep_tok, dtype=torch.long, device=device)
        scores = torch.tensor(keep_score, dtype=torch.float64, device=device)
    else:
        finished.extend(zip(scores.tolist(), history))

    def rank(item):
        score, seq = item
        return score / (len(seq) ** length_penalty) if length_penalty else score

    return max(finished, key=rank)[1]
