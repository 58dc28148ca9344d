"""Per-step state resets and zoneout: one fused call vs the per-step loops people write today.

    python benchmarks/bench_rl.py [--threads 2] [--rounds 5] [--mrt 0.3] [--out FILE.json]

Cases (fwd+bwd, float32, CPU):

- ``reset``: CleanRL's ``ppo_atari_lstm.py`` shape, LSTM(512 -> 128), 8 environments, 128 steps,
  random episode ends (p = 0.05 per step). Baseline: CleanRL's ``get_states`` loop over
  torch.nn.LSTM, one call per step with the state masked by ``(1 - done)``. Ours: one
  ``fusedrnn.LSTM(x, state, reset=done)`` call. Target >= 10x.
- ``zoneout``: LSTM zoneout (p = 0.1 on h and c) at B=32, T=256, H=128 (I = 128). Baseline:
  ESPnet's ``ZoneOutCell`` pattern, torch.nn.LSTMCell per step and a Bernoulli mask per step
  and state. Ours: ``fusedrnn.LSTM(..., zoneout=0.1)`` in training mode. Target >= 5x.
- ``off``: the cost of the features when off: the plain fusedrnn.LSTM call vs one with an
  all-zero ``reset`` and with ``zoneout=0`` (which runs the very same kernels), B=32, T=256,
  H=128. Ratio ~1.

Ratios are interleaved per round in this one process (``bench_cpu.interleaved``: medians of
torch.utils.benchmark, then the median ratio over rounds, min and max beside it). The machine
line comes first. Machines are shared and noisy: rerun before quoting a single number.
"""

from __future__ import annotations

import argparse
import json

import torch

import fusedrnn

try:
    from bench_cpu import interleaved, machine, row
except ImportError:  # run as a module from the repository root
    from benchmarks.bench_cpu import interleaved, machine, row


def cleanrl_get_states(lstm, x, state, done):
    """CleanRL's ``get_states`` (ppo_atari_lstm.py): the LSTM once per step."""
    new_hidden = []
    for h, d in zip(x, done):
        h, state = lstm(h.unsqueeze(0), ((1.0 - d).view(1, -1, 1) * state[0],
                                         (1.0 - d).view(1, -1, 1) * state[1]))
        new_hidden += [h]
    return torch.flatten(torch.cat(new_hidden), 0, 1), state


class ZoneOutCell(torch.nn.Module):
    """ESPnet's ``ZoneOutCell`` (espnet.nets.pytorch_backend.tacotron2.decoder): a torch.nn cell
    with zoneout on each state, one Bernoulli mask per step and state in training."""

    def __init__(self, cell, zoneout_rate=0.1):
        super().__init__()
        self.cell, self.zoneout_rate = cell, zoneout_rate

    def forward(self, inputs, hidden):
        next_hidden = self.cell(inputs, hidden)
        return tuple(self._zoneout(h, nh, self.zoneout_rate) for h, nh in zip(hidden, next_hidden))

    def _zoneout(self, h, next_h, prob):
        if self.training:
            mask = h.new(*h.size()).bernoulli_(prob)
            return mask * h + (1 - mask) * next_h
        return prob * h + (1 - prob) * next_h


def zoneout_loop(zcell, x):
    B, H = x.shape[1], zcell.cell.hidden_size
    state = (x.new_zeros(B, H), x.new_zeros(B, H))
    ys = []
    for xt in x:
        state = zcell(xt, state)
        ys.append(state[0])
    return torch.stack(ys), state


def fwd_bwd(fn, params, x):
    def run():
        for p in params:
            p.grad = None
        x.grad = None
        y, state = fn(x)
        (y.sum() + state[0].sum() + state[1].sum()).backward()
    return run


def bench_reset(rows, rounds, mrt):
    T, B, I, H = 128, 8, 512, 128
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H)
    ours = fusedrnn.LSTM(I, H, backend="cpu")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, requires_grad=True)
    done = (torch.rand(T, B) < 0.05).float()
    s0 = (torch.zeros(1, B, H), torch.zeros(1, B, H))
    base = fwd_bwd(lambda x: cleanrl_get_states(ref, x, s0, done), list(ref.parameters()), x)
    fused = fwd_bwd(lambda x: ours(x, s0, reset=done), list(ours.parameters()), x)
    rows.append(row("reset (CleanRL get_states loop)", "LSTM", T, B, H, "per-step torch.nn.LSTM",
                    interleaved(base, fused, rounds, mrt), ">= 10x", I=I))


def bench_zoneout(rows, rounds, mrt):
    T, B, I, H, p = 256, 32, 128, 128, 0.1
    torch.manual_seed(0)
    zcell = ZoneOutCell(torch.nn.LSTMCell(I, H), p).train()
    ours = fusedrnn.LSTM(I, H, backend="cpu", zoneout=p).train()
    x = torch.randn(T, B, I, requires_grad=True)
    base = fwd_bwd(lambda x: zoneout_loop(zcell, x), list(zcell.parameters()), x)
    fused = fwd_bwd(lambda x: ours(x), list(ours.parameters()), x)
    rows.append(row("zoneout (ESPnet ZoneOutCell loop)", "LSTM", T, B, H,
                    "per-step torch.nn.LSTMCell", interleaved(base, fused, rounds, mrt), ">= 5x",
                    I=I))


def bench_off(rows, rounds, mrt):
    T, B, I, H = 256, 32, 128, 128
    torch.manual_seed(0)
    plain = fusedrnn.LSTM(I, H, backend="cpu")
    off = fusedrnn.LSTM(I, H, backend="cpu", zoneout=0.0)
    off.load_state_dict(plain.state_dict())
    x = torch.randn(T, B, I, requires_grad=True)
    zeros = torch.zeros(T, B)
    base = fwd_bwd(lambda x: plain(x), list(plain.parameters()), x)
    rows.append(row("off: zoneout=0", "LSTM", T, B, H, "plain fusedrnn.LSTM",
                    interleaved(base, fwd_bwd(lambda x: off(x), list(off.parameters()), x),
                                rounds, mrt), "~1x"))
    rows.append(row("off: all-zero reset", "LSTM", T, B, H, "plain fusedrnn.LSTM",
                    interleaved(base, fwd_bwd(lambda x: plain(x, reset=zeros),
                                              list(plain.parameters()), x), rounds, mrt), "~1x"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mrt", type=float, default=0.3, help="min run time per timing (s)")
    ap.add_argument("--only", choices=("reset", "zoneout", "off"), default=None)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    rows = []
    for name, fn in (("reset", bench_reset), ("zoneout", bench_zoneout), ("off", bench_off)):
        if args.only in (None, name):
            fn(rows, args.rounds, args.mrt)
    print(f"{'case':36} {'baseline':>12} {'fusedrnn':>10} {'ratio':>7} {'(min-max)':>13}  target")
    for r in rows:
        print(f"{r['case']:36} {r['baseline_val']:10.2f}ms {r['fusedrnn_val']:8.2f}ms "
              f"{r['ratio']:6.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})  {r['target']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(machine=machine(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
