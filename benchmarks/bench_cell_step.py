"""Single-step cells at B=1 (issue 12): fusedrnn's RNNCell/LSTMCell/GRUCell vs torch.nn's, no-grad
streaming inference, one call per time step.

    python benchmarks/bench_cell_step.py [--H 64 256] [--rounds 15] [--calls 2000]

Timed with time.process_time (CPU time of this process), not wall time: the machines this runs
on are shared and heavily loaded, and CPU time does not count the time another process holds the
core. 1 thread. torch.nn and fusedrnn alternate round by round (A, B, A, B, ...), so drifts hit
both sides; each row prints the median per-call time of each side and the median (min-max) of the
per-round ratios. ``op`` is the raw torch.ops.fusedrnn.cell_step alone (no Python around it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fusedrnn

CELLS = {"LSTMCell": (torch.nn.LSTMCell, fusedrnn.LSTMCell, "LSTM"),
         "GRUCell": (torch.nn.GRUCell, fusedrnn.GRUCell, "GRU"),
         "RNNCell": (torch.nn.RNNCell, fusedrnn.RNNCell, "RNN_TANH")}


def per_call_s(fn, calls: int) -> float:
    t0 = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - t0) / calls


def interleaved(fns, rounds: int, calls: int):
    """Median per-call seconds of each fn, and the per-round ratios fns[0] / fns[i]."""
    for fn in fns:  # warm-up: allocator, MKL, first-call dispatcher caches
        per_call_s(fn, 50)
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            times[i].append(per_call_s(fn, calls))
    ratios = [[a / b for a, b in zip(times[0], t)] for t in times[1:]]
    return [statistics.median(t) for t in times], ratios


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--H", type=int, nargs="+", default=[64, 256])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=2000)
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, fusedrnn kernels {fusedrnn._ext._C._cpu_isa()}, 1 thread, "
          f"process_time, {a.rounds} interleaved rounds x {a.calls} calls")
    print("| cell | H | torch.nn us | fusedrnn us | op us | ratio median (min-max) |")
    print("|---|---|---|---|---|---|")
    for H in a.H:
        for name, (ref_cls, fused_cls, mode) in CELLS.items():
            torch.manual_seed(0)
            ref, fused = ref_cls(H, H), fused_cls(H, H, backend="cpu")
            fused.load_state_dict(ref.state_dict())
            x, h = torch.randn(1, H), torch.randn(1, H)
            c = h.clone() if mode == "LSTM" else None
            state = (h, c) if mode == "LSTM" else h
            op = torch.ops.fusedrnn.cell_step
            w = (fused.weight_ih.detach(), fused.bias_ih.detach(), fused.weight_hh.detach(),
                 fused.bias_hh.detach())
            with torch.no_grad():
                med, ratios = interleaved(
                    [lambda: ref(x, state), lambda: fused(x, state),
                     lambda: op(mode, x, w[0], w[1], w[2], w[3], h, c)], a.rounds, a.calls)
            r = ratios[0]
            print(f"| {name} | {H} | {1e6 * med[0]:.1f} | {1e6 * med[1]:.1f} | {1e6 * med[2]:.1f} "
                  f"| {statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f}) |", flush=True)


if __name__ == "__main__":
    main()
