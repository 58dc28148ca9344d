"""Truncated backpropagation through time (TBPTT) for stateful training over long streams.

A long stream [T, B, ...] (B parallel streams, e.g. a corpus cut into B strips) is cut into
chunks of ``chunk_len`` steps. The recurrent state is carried from one chunk to the next, so the
forward pass sees the whole history, but it is detached at each chunk boundary, so the backward
pass only reaches ``chunk_len`` steps back and memory stays bounded. Where a new sequence starts
inside a stream (``resets[t, b]``), that stream's state is zeroed before step t, cutting both
the forward and the gradient path; the chunk is split there, so resets need not line up with
chunk boundaries.

    tbptt = TBPTT(model, loss_fn, optimizer, chunk_len=64)
    for inputs, targets in batches:            # [T, B, ...] each
        losses = tbptt.train(inputs, targets)  # one optimizer step per chunk
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["TBPTT", "detach_state", "reset_state"]


def detach_state(state):
    """Detach a recurrent state: a tensor, a tuple/list of them (LSTM), or None."""
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    return state.detach()


def reset_state(state, mask: Tensor, batch_dim: int = 1):
    """Zero the streams of ``state`` where ``mask`` [B] is True (no gradient flows through a
    zeroed entry). ``batch_dim`` is 1 for torch.nn's [layers, B, H] states."""
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return type(state)(reset_state(s, mask, batch_dim) for s in state)
    shape = [1] * state.dim()
    shape[batch_dim] = mask.numel()
    keep = (~mask.to(device=state.device, dtype=torch.bool)).reshape(shape)
    return state * keep.to(state.dtype)


class TBPTT:
    """Stateful truncated-BPTT trainer.

    Args:
        model: ``model(x_chunk, state) -> (output, new_state)`` with ``state`` None at the
            start, e.g. a ``fusedrnn.LSTM`` or a module that wraps one and a readout.
        loss_fn: ``loss_fn(output_chunk, target_chunk) -> scalar`` (a mean over the chunk, so
            equal chunks weigh equally).
        optimizer: stepped once per chunk; None to only accumulate gradients (``train`` then
            leaves them in ``.grad`` for the caller).
        chunk_len: steps per chunk (the truncation length k).
        time_dim: the time dimension of inputs/targets/outputs (1 for batch_first models).
        state_batch_dim: the batch dimension of the state tensors (1 for torch.nn layers).
        grad_clip: clip the global gradient norm to this before each optimizer step.
    """

    def __init__(self, model: Callable, loss_fn: Callable, optimizer=None, chunk_len: int = 64,
                 *, time_dim: int = 0, state_batch_dim: int = 1, grad_clip: float | None = None):
        if chunk_len < 1:
            raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.chunk_len, self.time_dim, self.state_batch_dim = chunk_len, time_dim, state_batch_dim
        self.grad_clip = grad_clip
        self.state = None

    def reset(self, mask: Tensor | None = None) -> None:
        """Forget the carried state: of every stream (``mask`` None) or where ``mask`` [B]."""
        self.state = None if mask is None else reset_state(self.state, mask, self.state_batch_dim)

    def _params(self):
        if isinstance(self.model, nn.Module):
            return [p for p in self.model.parameters() if p.grad is not None]
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def forward_chunk(self, x: Tensor, resets: Tensor | None = None):
        """Run one chunk from the carried state (attached to the graph) and carry on.

        x: [..T.., B, ...] with time on ``time_dim``; resets: [T, B] bool or None.
        Returns the output of the chunk (concatenated over the pieces between resets).
        """
        T = x.size(self.time_dim)
        cuts = [0, T]
        if resets is not None:
            if resets.dim() != 2 or resets.size(0) != T:
                raise ValueError(f"resets must be [T={T}, B] bool, got {tuple(resets.shape)}")
            cuts = sorted({0, T, *torch.nonzero(resets.any(1)).flatten().tolist()})
        outs = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            if resets is not None and bool(resets[a].any()):
                self.state = reset_state(self.state, resets[a], self.state_batch_dim)
            out, self.state = self.model(x.narrow(self.time_dim, a, b - a), self.state)
            outs.append(out)
        return outs[0] if len(outs) == 1 else torch.cat(outs, self.time_dim)

    def train(self, inputs: Tensor, targets: Tensor, resets: Tensor | None = None) -> list[float]:
        """One pass over a stream segment, one backward (and optimizer step) per chunk.

        Args:
            inputs: [T, B, ...] (time on ``time_dim``), continuing the previous call's streams.
            targets: matching targets, time on ``time_dim``.
            resets: [T, B] bool, True where a new sequence starts (state zeroed before step t).
        Returns:
            The loss of every chunk, as floats.
        """
        T = inputs.size(self.time_dim)
        if targets.size(self.time_dim) != T:
            raise ValueError(f"targets have {targets.size(self.time_dim)} steps, inputs {T}")
        losses = []
        for start in range(0, T, self.chunk_len):
            n = min(self.chunk_len, T - start)
            self.state = detach_state(self.state)  # the truncation: no gradient into the past
            out = self.forward_chunk(inputs.narrow(self.time_dim, start, n),
                                     None if resets is None else resets[start:start + n])
            loss = self.loss_fn(out, targets.narrow(self.time_dim, start, n))
            if self.optimizer is not None:
                self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.optimizer is not None:
                if self.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(self._params(), self.grad_clip)
                self.optimizer.step()
            losses.append(float(loss.detach()))
        self.state = detach_state(self.state)
        return losses

    @torch.no_grad()
    def evaluate(self, inputs: Tensor, targets: Tensor, resets: Tensor | None = None) -> float:
        """Mean of ``loss_fn`` over the chunks of a stream, carrying the state, no training."""
        T = inputs.size(self.time_dim)
        total, steps = 0.0, 0
        for start in range(0, T, self.chunk_len):
            n = min(self.chunk_len, T - start)
            out = self.forward_chunk(inputs.narrow(self.time_dim, start, n),
                                     None if resets is None else resets[start:start + n])
            total += float(self.loss_fn(out, targets.narrow(self.time_dim, start, n))) * n
            steps += n
        return total / max(steps, 1)
