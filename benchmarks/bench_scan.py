"""MinGRU vs GRU on CPU over sequence length: forward + backward, same hidden size, B=32.

    python benchmarks/bench_scan.py                       # H=128, T = 1 .. 4096
    python benchmarks/bench_scan.py --malloc tuned        # large blocks reused, not re-faulted
    python benchmarks/bench_scan.py --hidden 256 --t 256 4096 --out bench_out/scan
    python benchmarks/bench_scan.py --threads 2 --timer wall   # on an otherwise idle machine
    python benchmarks/bench_scan.py --hidden 64 --t 4096 --rounds 7   # issue 12's point (>= 2.5x)

Contenders, one run, same input: torch.nn.GRU, fusedrnn.GRU(backend="auto") (the backend that
actually ran is recorded), fusedrnn.MinGRU and MinLSTM (linear space, the default: on CPU the
fused C++ pass of csrc/cpu/minrnn_scan.cpp) and MinGRU(log_space=True) (the paper's training
path), and the bare ``linear_scan`` (C++) with its effective bandwidth. Each point: one warm-up
call, then the median of ``torch.utils.benchmark.Timer.blocked_autorange``; with ``--rounds N``
instead N interleaved rounds of one call per contender, median and min-max (drift on a shared
machine then hits every contender alike). By default one thread and the process's CPU
time, so that other jobs on a shared machine do not count; ``--timer wall`` for elapsed time. Prints a table, the MinGRU/GRU ratios at the
longest T, the T from which MinGRU beats the fused GRU, and writes JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.utils.benchmark as tb

import fusedrnn
from fusedrnn.scan import resolve as resolve_scan


def machine() -> str:
    try:
        model = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                 if ln.startswith("model name")][0]
    except (OSError, IndexError):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads"


TIMERS = {"wall": time.perf_counter, "process": time.process_time}


def median_s(fn, min_run_time: float, timer: str) -> float:
    fn()  # warm-up: first-call allocations, lazy registration
    t = tb.Timer(stmt="fn()", globals={"fn": fn}, timer=TIMERS[timer],
                 num_threads=torch.get_num_threads())  # Timer's own default is 1 thread
    return t.blocked_autorange(min_run_time=min_run_time).median


def fwd_bwd(model, x):
    def run():
        model.zero_grad(set_to_none=True)
        x.grad = None
        y, h = model(x)
        (y.sum() + h.sum()).backward()
    return run


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--t", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024, 2048, 4096])
    p.add_argument("--min-run-time", type=float, default=1.0)
    p.add_argument("--out", default="bench_out/scan")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=0,
                   help="N > 0: N interleaved rounds, one call per contender each (median, min-max)")
    p.add_argument("--timer", choices=tuple(TIMERS), default="process",
                   help="process: CPU time of this process (robust on a shared machine, use with "
                        "--threads 1); wall: elapsed time")
    p.add_argument("--malloc", choices=("default", "tuned"), default="default",
                   help="tuned: rerun with glibc's MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ "
                        "raised, so freed large blocks are reused instead of returned to the OS "
                        "and faulted in again (what jemalloc/tcmalloc do; applies to every "
                        "contender alike)")
    args = p.parse_args(argv)
    if args.malloc == "tuned" and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        big = str(1 << 34)
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=big, MALLOC_TRIM_THRESHOLD_=big)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    H, B = args.hidden, args.batch
    gru_backend = fusedrnn.backends.resolve("auto", torch.device("cpu")).__name__
    scan_backend = resolve_scan("auto", torch.device("cpu")).__name__
    models = {
        "torch.nn.GRU": torch.nn.GRU(H, H),
        f"fusedrnn.GRU[{gru_backend.rsplit('.', 1)[-1]}]": fusedrnn.GRU(H, H, backend="auto"),
        "MinGRU": fusedrnn.MinGRU(H, H),
        "MinLSTM": fusedrnn.MinLSTM(H, H),
        "MinGRU(log_space)": fusedrnn.MinGRU(H, H, log_space=True),
    }
    rows = []
    print(f"machine: {machine()}")
    print(f"B={B} H=I={H}, forward+backward, fusedrnn.GRU backend: {gru_backend}, "
          f"scan backend: {scan_backend}, timer: {args.timer}, threads: {args.threads}, "
          f"malloc: {args.malloc}, "
          f"load average: {os.getloadavg()[0]:.1f}")
    names = list(models) + ["linear_scan fwd+bwd"]
    print(f"{'T':>6} " + " ".join(f"{n:>22}" for n in names) + f" {'scan GB/s':>10}")
    for T in args.t:
        x = torch.randn(T, B, H, requires_grad=True)
        row = {"T": T}
        if args.rounds > 0:
            runs = {name: fwd_bwd(m, x) for name, m in models.items()}
            for fn in runs.values():
                fn()  # warm-up
            times = {name: [] for name in runs}
            for _ in range(args.rounds):
                for name, fn in runs.items():
                    t0 = TIMERS[args.timer]()
                    fn()
                    times[name].append(TIMERS[args.timer]() - t0)
            for name, v in times.items():
                row[name] = statistics.median(v)
                row[name + " min-max"] = (min(v), max(v))
        else:
            for name, m in models.items():
                row[name] = median_s(fwd_bwd(m, x), args.min_run_time, args.timer)
        a = torch.rand(B, T, H).requires_grad_()
        b = torch.randn(B, T, H).requires_grad_()

        def scan_run():
            a.grad = b.grad = None
            fusedrnn.linear_scan(a, b).sum().backward()
        row["linear_scan fwd+bwd"] = median_s(scan_run, args.min_run_time, args.timer)
        # bytes the two kernels move: fwd reads a, b, writes h; bwd reads a, h, dh, writes da, db
        row["scan_bytes"] = 8 * B * T * H * 4
        rows.append(row)
        gbs = row["scan_bytes"] / row["linear_scan fwd+bwd"] / 1e9
        print(f"{T:>6} " + " ".join(f"{row[n] * 1e3:>19.2f} ms" for n in names) + f" {gbs:>10.2f}")

    fused = [n for n in models if n.startswith("fusedrnn.GRU")][0]
    last = rows[-1]
    ratio_torch = last["torch.nn.GRU"] / last["MinGRU"]
    ratio_fused = last[fused] / last["MinGRU"]
    overtake = next((r["T"] for r in rows if r["MinGRU"] < r[fused]), None)
    print(f"\nat T={last['T']}: MinGRU is {ratio_torch:.1f}x faster than torch.nn.GRU and "
          f"{ratio_fused:.1f}x faster than {fused} (forward+backward)")
    print(f"MinGRU overtakes {fused} from T={overtake} on (smallest T measured: {rows[0]['T']})")
    ratio_lstm = last[fused] / last["MinLSTM"]
    print(f"at T={last['T']}: {fused} time / MinGRU time = {ratio_fused:.2f}x, / MinLSTM time = "
          f"{ratio_lstm:.2f}x (issue 12 asks >= 2.5x at T=4096, B=32, H=64)")
    result = dict(machine=machine(), timer=args.timer, threads=args.threads, malloc=args.malloc,
                  load_average=os.getloadavg(), B=B, H=H, fused_gru_backend=gru_backend,
                  scan_backend=scan_backend, rows=rows, ratio_vs_torch_gru=ratio_torch,
                  ratio_vs_fused_gru=ratio_fused, minlstm_ratio_vs_fused_gru=ratio_lstm,
                  overtake_T=overtake,
                  git=subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip())
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for n in names:
            ax.loglog([r["T"] for r in rows], [r[n] * 1e3 for r in rows], "o-", label=n)
        ax.set_xlabel("T (steps)")
        ax.set_ylabel("forward+backward, median ms")
        ax.set_title(f"B={B}, H={H}, CPU: {machine().split(',')[0]}", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out + ".png", dpi=120)
    except ImportError:
        pass
    print(f"wrote {args.out}.json and .png")
    return result


if __name__ == "__main__":
    main()
