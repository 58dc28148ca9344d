"""LayerNormLSTM on the CPU backend: vs what users write today, and LN's cost over our LSTM.

    python benchmarks/bench_layernorm.py [--threads 2] [--rounds 5] [--T 256] [--B 32] [--H 128]

Training step (forward + backward) of one layer, I = H:
  * fused ``fusedrnn.LayerNormLSTM(backend="cpu")`` vs a Python loop of ``torch.nn.LSTMCell``
    plus ``torch.nn.LayerNorm`` (the pattern of pytorch/pytorch#12167; same equations: LN of the
    input and recurrent products, LN of the cell state), target >= 5x;
  * ``fusedrnn.LSTM(backend="cpu")`` vs ``fusedrnn.LayerNormLSTM(backend="cpu")``: LN's
    overhead, target <= 1.5x.
Same process, interleaved rounds, medians (the helpers of bench_cpu.py); the outputs of the
loop and of the fused layer are checked equal first. Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

import fusedrnn
from fusedrnn.ops import cpu as cpu_ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import interleaved, machine, train_step  # noqa: E402


class LoopLayerNormLSTM(nn.Module):
    """What users write today: torch.nn.LSTMCell's weights with torch.nn.LayerNorm around the
    products and the cell state, one Python iteration per step (pytorch#12167)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        H = hidden_size
        self.cell = nn.LSTMCell(input_size, H)
        self.ln_ih = nn.LayerNorm(4 * H, elementwise_affine=True, bias=False)
        self.ln_hh = nn.LayerNorm(4 * H, elementwise_affine=True, bias=False)
        self.ln_c = nn.LayerNorm(H)

    def forward(self, x):  # x [T, B, I]
        c = self.cell
        B, H = x.shape[1], c.hidden_size
        h = x.new_zeros(B, H)
        s = x.new_zeros(B, H)
        xw = self.ln_ih(F.linear(x, c.weight_ih)) + c.bias_ih + c.bias_hh  # all steps at once
        ys = []
        for t in range(x.shape[0]):
            i, f, g, o = (xw[t] + self.ln_hh(F.linear(h, c.weight_hh))).chunk(4, 1)
            s = torch.sigmoid(f) * s + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self.ln_c(s))
            ys.append(h)
        return torch.stack(ys), (h, s)

    def load_from(self, m: fusedrnn.LayerNormLSTM) -> "LoopLayerNormLSTM":
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.cell, name).copy_(getattr(m, name + "_l0"))
            self.ln_ih.weight.copy_(m.ln_ih_weight_l0)
            self.ln_hh.weight.copy_(m.ln_hh_weight_l0)
            self.ln_c.weight.copy_(m.ln_c_weight_l0)
            self.ln_c.bias.copy_(m.ln_c_bias_l0)
        return self


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-run-time", type=float, default=0.5)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--H", type=int, default=128)
    args = ap.parse_args()
    if cpu_ops.unavailable():
        raise SystemExit(f"backend 'cpu' unavailable: {cpu_ops.unavailable()}")
    torch.set_num_threads(args.threads)
    T, B, H = args.T, args.B, args.H
    torch.manual_seed(0)
    fused = fusedrnn.LayerNormLSTM(H, H, backend="cpu")
    with torch.no_grad():  # LN parameters away from their initial 1 / 0
        for n, p in fused.named_parameters():
            if n.startswith("ln_"):
                p.add_(0.1 * torch.randn_like(p))
    loop = LoopLayerNormLSTM(H, H).load_from(fused)
    plain = fusedrnn.LSTM(H, H, backend="cpu")
    x = torch.randn(T, B, H)
    g = torch.randn(T, B, H)
    with torch.no_grad():  # same equations: in float64 (float32 runs of this random LSTM
        # drift apart exponentially over T from rounding alone, as the reference's does too)
        f64 = copy.deepcopy(fused).double()
        torch.testing.assert_close(f64(x.double())[0], copy.deepcopy(loop).double()(x.double())[0],
                                   rtol=1e-6, atol=1e-8)

    print(f"# LayerNormLSTM, training step (fwd+bwd), T={T}, B={B}, I=H={H}, float32")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} (shared machine)")
    res = interleaved(train_step(loop, x, g), train_step(fused, x, g), args.rounds,
                      args.min_run_time)
    print(f"fused vs Python loop of LSTMCell + LayerNorm: loop {1e3 * res[0]:.1f} ms, fused "
          f"{1e3 * res[1]:.1f} ms: {res[2]:.2f}x (rounds {res[3]:.2f}-{res[4]:.2f}), "
          f"target >= 5x")
    res = interleaved(train_step(fused, x, g), train_step(plain, x, g), args.rounds,
                      args.min_run_time)
    print(f"LN overhead over fusedrnn.LSTM: LN {1e3 * res[0]:.1f} ms, plain "
          f"{1e3 * res[1]:.1f} ms: {res[2]:.2f}x (rounds {res[3]:.2f}-{res[4]:.2f}), "
          f"target <= 1.5x")


if __name__ == "__main__":
    main()
