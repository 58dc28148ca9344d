"""Gradient-flow diagnostics: how far back through time does a loss reach?

``gradient_flow(model, x)`` places a loss at chosen steps (default: the last) and measures, for
every time step t, the gradient norms

    ‖∂L/∂x_t‖  the input at step t: how much the loss can still learn from step t's input
    ‖∂L/∂h_t‖  the top layer's hidden state at t: the signal BPTT carries back through time

and fits a geometric decay rate to them: vanishing gradients show up as a rate well below 1,
exploding ones as a rate above 1.

Which h_t. ‖∂L/∂h_t‖ is the *total* derivative through every later step, which autograd only
exposes for a tensor that the recurrence really passes on. Hooks on the output sequence y would
not give it: y_t is a side branch of the recurrence, so its gradient is only the direct loss term
(zero away from the loss steps). So the layer is re-run one step at a time through its public
API, ``model(x[t:t+1], state)``, and a zero "probe" is added to the top layer's h_t before it is
both read out and passed on; ∂L/∂probe_t is then exactly ∂L/∂h_t. For a stack of layers this is
the top layer's state (lower layers do not depend on it, so holding them fixed loses nothing).
An LSTM's cell state c_t gets a probe too, on the copy passed on to step t+1: that is the dc
that BPTT carries between steps (the constant error carousel), without c_t's path into the same
step's h_t (which the layer computes internally). ‖∂L/∂x_t‖ comes from one full-sequence call, so
it also covers bidirectional layers, whose h_t has no single direction of flow (their
``h_grad_norm`` is None).

Works for fusedrnn's RNN/LSTM/GRU (any backend), torch.nn's, and any layer with their calling
convention ``model(x, state) -> (y, state)`` with states shaped [layers*directions, B, H].
Norms are per sequence, averaged over the batch; dropout follows the model's mode, so call it
in ``eval()`` mode for a deterministic picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["GradientFlow", "gradient_flow", "fit_decay_rate", "plot_gradient_flows"]


def fit_decay_rate(norms: Tensor, last: int) -> float:
    """Least-squares fit of ``norms[t] ≈ C * rate**(last - t)`` over t = 0..last.

    Args:
        norms: [T] gradient norms.
        last: the step the fit runs up to (the earliest loss step: before it, every loss term
            has to travel back through the recurrence, so the curve is a sum of geometric decays).
    Returns:
        The per-step factor ``rate`` (1.0 = no decay), or NaN when fewer than two steps have a
        finite, non-zero norm (fully vanished gradients underflow to exactly zero).
    """
    n = norms[: last + 1].double()
    dist = torch.arange(last, -1, -1, dtype=torch.float64)  # steps back from the loss
    ok = torch.isfinite(n) & (n > 0)
    if int(ok.sum()) < 2:
        return math.nan
    d, logn = dist[ok], n[ok].log()
    d_c = d - d.mean()
    if float((d_c * d_c).sum()) == 0.0:
        return math.nan
    slope = float((d_c * (logn - logn.mean())).sum() / (d_c * d_c).sum())
    return math.exp(slope)


@dataclass
class GradientFlow:
    """Per-step gradient norms of one ``gradient_flow`` run.

    Attributes:
        loss_steps: the steps the loss was placed at (non-negative indices).
        x_grad_norm: [T] float64, mean over the batch of ‖∂L/∂x_t‖.
        h_grad_norm: [T] mean over the batch of ‖∂L/∂h_t‖ (top layer), None for bidirectional.
        c_grad_norm: [T] for an LSTM, ‖∂L/∂c_t‖ of the cell state carried to step t+1 (see the
            module doc), else None.
        x_decay_rate, h_decay_rate: fitted per-step factors (see ``fit_decay_rate``).
        h_step_ratio: [T-1] ‖∂L/∂h_t‖ / ‖∂L/∂h_{t+1}‖, the local decay at every step.
        label: a name for plots.
    """

    loss_steps: list[int]
    x_grad_norm: Tensor
    h_grad_norm: Tensor | None
    c_grad_norm: Tensor | None = None
    x_decay_rate: float = math.nan
    h_decay_rate: float = math.nan
    h_step_ratio: Tensor | None = None
    label: str = ""

    @property
    def steps(self) -> int:
        return int(self.x_grad_norm.numel())

    def plot(self, path=None, ax=None, label: str | None = None, title: str | None = None):
        """Plot the norms against the time step on a log scale.

        Args:
            path: write a PNG here (matplotlib's Agg backend, no display needed); None to skip.
            ax: draw into this matplotlib Axes instead of a new figure.
            label: legend prefix (default ``self.label``).
            title: figure title.
        Returns:
            The Axes drawn into.
        """
        import matplotlib

        if ax is None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        own = ax is None
        if own:
            fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        name = self.label if label is None else label
        t = range(self.steps)
        pos = lambda v: v.clamp_min(1e-45).tolist()  # noqa: E731  (log axis: 0 would vanish)
        if self.h_grad_norm is not None:
            line = ax.plot(t, pos(self.h_grad_norm),
                           label=f"{name} ‖∂L/∂h_t‖ (rate {self.h_decay_rate:.3g}/step)")[0]
            ax.plot(t, pos(self.x_grad_norm), ls="--", color=line.get_color(),
                    label=f"{name} ‖∂L/∂x_t‖")
        else:
            ax.plot(t, pos(self.x_grad_norm),
                    label=f"{name} ‖∂L/∂x_t‖ (rate {self.x_decay_rate:.3g}/step)")
        ax.set_yscale("log")
        ax.set_xlabel("time step t")
        ax.set_ylabel("gradient norm (mean over batch)")
        ax.legend(fontsize=7)
        if title:
            ax.set_title(title)
        if own and path is not None:
            ax.figure.tight_layout()
            ax.figure.savefig(path)
            plt.close(ax.figure)
        return ax


def plot_gradient_flows(results: Sequence[GradientFlow], path, title: str | None = None):
    """Several ``GradientFlow`` results (e.g. one per cell type) on one log-scale figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for r in results:
        r.plot(ax=ax)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _sum_output_loss(y_t: Tensor, t: int) -> Tensor:
    return y_t.sum()


def _per_seq_norm(g: Tensor, batch_dim: int) -> Tensor:
    """Mean over the batch of the L2 norm of each sequence's slice of ``g``."""
    g = g.movedim(batch_dim, 0).flatten(1).double()
    return g.norm(dim=1).mean()


def gradient_flow(
    model: nn.Module,
    x: Tensor,
    hx=None,
    loss_steps: int | Sequence[int] = -1,
    loss_fn: Callable[[Tensor, int], Tensor] | None = None,
    label: str = "",
) -> GradientFlow:
    """Per-time-step gradient norms of a loss placed at ``loss_steps``.

    Args:
        model: a recurrent layer called as ``model(x, hx) -> (y, h_n)`` or ``(y, (h_n, c_n))``,
            e.g. ``fusedrnn.LSTM`` or ``torch.nn.GRU``; ``batch_first`` is read from it.
        x: [T, B, I] input ([B, T, I] when ``model.batch_first``). Not modified.
        hx: initial state as the model takes it, or None for zeros.
        loss_steps: step index or indices (negative counts from the end) the loss is placed at.
        loss_fn: ``loss_fn(y_t, t) -> scalar`` applied to the output y_t [B, H_out] at each loss
            step and summed; default ``y_t.sum()``. Use your task's loss (readout included) to
            see your model's real gradient flow.
        label: name used by ``.plot``.
    Returns:
        A ``GradientFlow`` with [T] norm tensors and fitted decay rates.

    Example::

        >>> rnn = fusedrnn.RNN(4, 32)
        >>> flow = fusedrnn.diagnostics.gradient_flow(rnn, torch.randn(100, 8, 4))
        >>> flow.h_decay_rate, flow.plot("flow.png")
    """
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D [T, B, I] (or [B, T, I] batch_first), got {x.dim()}-D")
    batch_first = bool(getattr(model, "batch_first", False))
    tdim = 1 if batch_first else 0
    T = x.size(tdim)
    steps = [loss_steps] if isinstance(loss_steps, int) else list(loss_steps)
    if not steps:
        raise ValueError("loss_steps must name at least one step")
    for s in steps:
        if not -T <= s < T:
            raise ValueError(f"loss step {s} is out of range for a sequence of length {T}")
    steps = sorted({s % T for s in steps})
    loss_fn = loss_fn or _sum_output_loss

    # ‖∂L/∂x_t‖ from one call over the whole sequence (the fused path, any direction).
    xg = x.detach().clone().requires_grad_(True)
    y, _ = model(xg, hx)
    loss = sum(loss_fn(y.select(tdim, s), s) for s in steps)
    (dx,) = torch.autograd.grad(loss, [xg])
    # dx.select(tdim, t) is [B, I] for either layout
    x_norm = torch.stack([_per_seq_norm(dx.select(tdim, t), 0) for t in range(T)])

    h_norm = c_norm = None
    if not getattr(model, "bidirectional", False):
        h_norm, c_norm = _state_grad_norms(model, x, hx, steps, loss_fn, tdim)
    first = steps[0]
    ratio = None
    if h_norm is not None and T > 1:
        ratio = h_norm[:-1] / h_norm[1:]
    return GradientFlow(
        loss_steps=steps, x_grad_norm=x_norm, h_grad_norm=h_norm, c_grad_norm=c_norm,
        x_decay_rate=fit_decay_rate(x_norm, first),
        h_decay_rate=math.nan if h_norm is None else fit_decay_rate(h_norm, first),
        h_step_ratio=ratio, label=label,
    )


def _state_grad_norms(model, x, hx, steps, loss_fn, tdim):
    """Re-run ``model`` one step at a time with a zero probe on the top layer's state."""
    T = x.size(tdim)
    state = hx
    probes_h, probes_c = [], []
    loss = 0.0
    for t in range(T):
        _, state = model(x.narrow(tdim, t, 1).detach(), state)
        h, c = (state if isinstance(state, tuple) else (state, None))
        ph = torch.zeros_like(h[-1], requires_grad=True)  # [B, H_out], top layer
        probes_h.append(ph)
        h = torch.cat([h[:-1], (h[-1] + ph).unsqueeze(0)], 0)
        if c is not None:
            pc = torch.zeros_like(c[-1], requires_grad=True)
            probes_c.append(pc)
            c = torch.cat([c[:-1], (c[-1] + pc).unsqueeze(0)], 0)
        state = (h, c) if c is not None else h
        if t in steps:
            # The top layer's h_t is the layer's output y_t for a unidirectional layer; reading
            # it after the probe puts the direct loss term into ∂L/∂probe_t as well.
            loss = loss + loss_fn(h[-1], t)
    grads = torch.autograd.grad(loss, probes_h + probes_c, allow_unused=True)

    def norm(g):  # None: the step lies after every loss step, no gradient reaches it
        return torch.zeros((), dtype=torch.float64) if g is None else _per_seq_norm(g, 0)

    h_norm = torch.stack([norm(g) for g in grads[:T]])
    c_norm = torch.stack([norm(g) for g in grads[T:]]) if probes_c else None
    return h_norm, c_norm
