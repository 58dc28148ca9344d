"""Op-level A/B of the CPU backend's per-step GEMM paths: FUSEDRNN_CPU_GEMM=plain vs packed.

The two paths are interleaved sample by sample in one process (the order alternates), so load
from other jobs hits both alike; prints wall-time min / median and CPU-time median per path and
their ratios (plain / packed) as a Markdown table.

    python benchmarks/bench_cpu_gemm_path.py --threads 1 --samples 61 LSTM:512:64 GRU:64:256
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import fusedrnn  # noqa: F401  (registers the fusedrnn ops)

PATHS = ("plain", "packed")


def _time(fn, samples: int) -> tuple[dict, dict]:
    """Wall and CPU seconds per path, interleaved, after two warm-up calls per path."""
    wall = {p: [] for p in PATHS}
    cpu = {p: [] for p in PATHS}
    for p in PATHS:
        os.environ["FUSEDRNN_CPU_GEMM"] = p
        fn()
        fn()
    for i in range(samples):
        for p in (PATHS if i % 2 == 0 else PATHS[::-1]):
            os.environ["FUSEDRNN_CPU_GEMM"] = p
            c, t = time.process_time(), time.perf_counter()
            fn()
            wall[p].append(time.perf_counter() - t)
            cpu[p].append(time.process_time() - c)
    return wall, cpu


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("specs", nargs="+", help="cell:T:H, e.g. LSTM:512:64 (B=32, float32)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=61)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    fwd, bwd = torch.ops.fusedrnn.recurrence_fwd, torch.ops.fusedrnn.recurrence_bwd
    print(f"threads={args.threads} load={os.getloadavg()} torch={torch.__version__}")
    print("| cell | T | H | op | plain wall min / med ms | packed wall min / med ms | plain cpu med "
          "| packed cpu med | ratio min | ratio med | ratio cpu |")
    print("| --- " * 11 + "|")
    for spec in args.specs:
        mode, T, H = spec.split(":")
        T, H, B = int(T), int(H), 32
        G = {"LSTM": 4, "GRU": 3}.get(mode, 1)
        torch.manual_seed(0)
        xw, h0 = torch.randn(T, B, G * H), torch.randn(B, H)
        w, b = torch.randn(G * H, H) * H ** -0.5, torch.randn(G * H)
        c0 = torch.randn(B, H) if mode == "LSTM" else None
        y, hT, cT, cs = fwd(mode, xw, w, b, h0, c0, None, False, None)
        dy, dh = torch.randn_like(y), torch.randn_like(hT)
        dc = torch.randn_like(cT) if mode == "LSTM" else None
        ops = {"fwd": lambda: fwd(mode, xw, w, b, h0, c0, None, False, None),
               "bwd": lambda: bwd(mode, dy, dh, dc, xw, w, b, h0, c0, None, False, None, y, cs)}
        for name, fn in ops.items():
            wall, cpu = _time(fn, args.samples)
            mn = {p: min(v) for p, v in wall.items()}
            md = {p: statistics.median(v) for p, v in wall.items()}
            cm = {p: statistics.median(v) for p, v in cpu.items()}
            print(f"| {mode} | {T} | {H} | {name} | {1e3 * mn['plain']:.3f} / {1e3 * md['plain']:.3f} "
                  f"| {1e3 * mn['packed']:.3f} / {1e3 * md['packed']:.3f} | {1e3 * cm['plain']:.3f} "
                  f"| {1e3 * cm['packed']:.3f} | {mn['plain'] / mn['packed']:.2f}x "
                  f"| {md['plain'] / md['packed']:.2f}x | {cm['plain'] / cm['packed']:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
