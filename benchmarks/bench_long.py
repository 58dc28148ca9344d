"""Very long sequences: LSTM, B=1, H=64, forward+backward, cpu backend vs torch.nn (issue 17).

    python benchmarks/bench_long.py [--seq-lens 1000 3000 10000 30000 100000] [--out DIR]

For each T it reports the median fwd+bwd time, the time per step (flat across T means linear in
T) and the peak memory. Every (implementation, T) runs in its own subprocess: after an untimed
warm-up run at that T (oneDNN builds its primitives per shape), it resets the kernel's resident
set high-water mark (``/proc/self/clear_refs``), runs the timed repeats, and reports VmHWM minus
the resident set at the reset: the memory the run itself touched (saved activations, outputs,
gradients, workspaces), without what imports or the warm-up left behind. The parity
of the cpu backend with torch.nn (float64) is checked first at T=2000; nothing is timed when it
fails (docs/architecture.md, convention 7). Prints a markdown table naming the machine and writes
bench_long.json, bench_long.md and bench_long.png to --out. Not a test: nothing here asserts a
time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import fusedrnn

try:
    from bench_cpu import machine
except ImportError:  # run as a module from the repository root
    from benchmarks.bench_cpu import machine

H = 64
IMPLS = ("torch.nn", "cpu")


def make(impl: str):
    """float32 torch.nn LSTM (seed 0), or fusedrnn's with the same weights."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(H, H)
    if impl == "torch.nn":
        return ref
    m = fusedrnn.LSTM(H, H, backend=impl)
    m.load_state_dict(ref.state_dict())
    return m


def fwd_bwd(m, x):
    leaf = x.detach().requires_grad_()
    y, (h, c) = m(leaf)
    (y.sum() + h.sum() + c.sum()).backward()
    return y.detach(), h.detach(), c.detach(), leaf.grad


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def child(impl: str, T: int, repeats: int) -> dict:
    """One case in this (fresh) process: warm-up, reset of the RSS high-water mark, timed
    repeats, peak RSS above the reset point."""
    m = make(impl)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, 1, H, generator=g)
    fwd_bwd(m, x)  # warm-up at this very shape
    m.zero_grad(set_to_none=True)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    base = _status_bytes("VmRSS")
    times = []
    for _ in range(repeats):
        m.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        fwd_bwd(m, x)
        times.append(time.perf_counter() - t0)
    peak = _status_bytes("VmHWM") - base
    return {"impl": impl, "T": T, "times_s": times, "median_s": statistics.median(times),
            "peak_bytes": max(peak, 0), "threads": torch.get_num_threads()}


def parity(T: int = 2000) -> str | None:
    """None if the cpu backend's outputs and input gradient match torch.nn in float64 within
    float32 tolerances, else what differs."""
    x = torch.randn(T, 1, H, generator=torch.Generator().manual_seed(2))
    want = fwd_bwd(make("torch.nn").double(), x.double())
    got = fwd_bwd(make("cpu"), x)
    for name, a, b in zip(("y", "h_n", "c_n", "d_input"), want, got):
        try:
            torch.testing.assert_close(b.double(), a, rtol=1e-5, atol=1e-5)
        except AssertionError as e:
            return f"{name}: {e}"
    return None


def run_case(impl: str, T: int, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__, "--child", impl, str(T), str(repeats)],
                          capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} T={T} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    by = {(r["impl"], r["T"]): r for r in rows}
    lines = ["| T | torch.nn ms | cpu ms | torch.nn us/step | cpu us/step | torch.nn peak MB "
             "| cpu peak MB | cpu/torch.nn memory |", "|" + "---|" * 8]
    for T in sorted({r["T"] for r in rows}):
        a, b = by[("torch.nn", T)], by[("cpu", T)]
        lines.append(
            f"| {T} | {a['median_s'] * 1e3:.1f} | {b['median_s'] * 1e3:.1f} | "
            f"{a['median_s'] / T * 1e6:.2f} | {b['median_s'] / T * 1e6:.2f} | "
            f"{a['peak_bytes'] / 2**20:.1f} | {b['peak_bytes'] / 2**20:.1f} | "
            f"{b['peak_bytes'] / max(a['peak_bytes'], 1):.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for impl in IMPLS:
        rs = sorted((r for r in rows if r["impl"] == impl), key=lambda r: r["T"])
        Ts = [r["T"] for r in rs]
        ax1.plot(Ts, [r["median_s"] / r["T"] * 1e6 for r in rs], "o-", label=impl)
        ax2.plot(Ts, [r["peak_bytes"] / 2**20 for r in rs], "o-", label=impl)
    ax1.set(xscale="log", xlabel="T", ylabel="fwd+bwd us per step", title="time per step")
    ax2.set(xscale="log", yscale="log", xlabel="T", ylabel="peak MB", title="peak memory")
    for ax in (ax1, ax2):
        ax.legend()
    fig.suptitle(f"LSTM B=1 H={H}, fwd+bwd")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-lens", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--child", nargs=3, metavar=("IMPL", "T", "REPEATS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        impl, T, repeats = args.child
        print(json.dumps(child(impl, int(T), int(repeats))))
        return
    mach = machine()  # before parity(): see docs/reliability.md on the cpu backend's thread count
    why = parity()
    if why is not None:
        sys.exit(f"PARITY FAIL (cpu backend vs torch.nn), nothing timed: {why}")
    load0 = os.getloadavg()[0]
    rows = [run_case(impl, T, args.repeats) for T in args.seq_lens for impl in IMPLS]
    # other jobs on the machine move the times (not the memory): the load is part of the result
    load = f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    md = (f"machine: {mach} (cases ran with {rows[0]['threads']} threads; {load})\n\n"
          f"LSTM B=1 H={H} I={H}, fwd+bwd, float32\n\n{table(rows)}\n")
    for impl in IMPLS:
        per_step = [r["median_s"] / r["T"] for r in rows if r["impl"] == impl]
        md += (f"\n{impl}: time per step from {min(per_step) * 1e6:.2f} to "
               f"{max(per_step) * 1e6:.2f} us over T = {min(args.seq_lens)}..{max(args.seq_lens)}")
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_long.md").write_text(md + "\n")
    (args.out / "bench_long.json").write_text(json.dumps(
        {"machine": mach, "load": load, "hidden": H, "batch": 1, "rows": rows,
         "memory_method": "VmHWM minus VmRSS after a clear_refs reset, one subprocess per case",
         "timing_method": f"median of {args.repeats} fwd+bwd after a warm-up run at that T"},
        indent=1))
    plot(rows, args.out / "bench_long.png")


if __name__ == "__main__":
    main()
