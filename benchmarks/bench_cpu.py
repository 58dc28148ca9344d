"""CPU backend vs torch.nn (and the reference backend): the performance table of issue 3.

    python benchmarks/bench_cpu.py [--threads 2] [--out benchmarks/results]

Every row is measured in this one run: medians of torch.utils.benchmark after warm-up, the
ratio is torch.nn time / fusedrnn time (> 1 means fusedrnn is faster). Prints a markdown table
naming the machine, and writes bench_cpu.json and bench_cpu.png to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch
import torch.utils.benchmark as tb

import fusedrnn
from fusedrnn.ops import cpu as cpu_ops

try:
    from _mem import peak_bytes
except ImportError:  # run as a module from the repository root
    from benchmarks._mem import peak_bytes

CELLS = {"LSTM": (torch.nn.LSTM, fusedrnn.LSTM), "GRU": (torch.nn.GRU, fusedrnn.GRU),
         "RNN": (torch.nn.RNN, fusedrnn.RNN)}


def machine() -> str:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def median_s(fn, min_run_time: float) -> float:
    fn()  # warm-up (allocator, MKL/oneDNN primitive caches)
    fn()
    return tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(
        min_run_time=min_run_time).median


def make_layers(cell: str, H: int, seed: int = 0):
    torch.manual_seed(seed)
    ref_cls, fused_cls = CELLS[cell]
    ref = ref_cls(H, H)
    fused = fused_cls(H, H, backend="cpu")
    fused.load_state_dict(ref.state_dict())
    refb = fused_cls(H, H, backend="reference")
    refb.load_state_dict(ref.state_dict())
    return ref, fused, refb


def train_step(m, x, g):
    def fn():
        y, _ = m(x)
        y.backward(g)
    return fn


def infer_step(m, x):
    def fn():
        with torch.no_grad():
            m(x)
    return fn


def bench_layers(rows, Ts, Hs, B, mrt):
    for H in Hs:
        for T in Ts:
            for cell in CELLS:
                ref, fused, refb = make_layers(cell, H)
                x = torch.randn(T, B, H, requires_grad=True)
                g = torch.randn(T, B, H)
                t_nn = median_s(train_step(ref, x, g), mrt)
                t_train = median_s(train_step(fused, x, g), mrt)
                rows.append(dict(case="fwd+bwd", cell=cell, T=T, B=B, H=H, torch_nn_ms=1e3 * t_nn,
                                 fusedrnn_ms=1e3 * t_train, ratio=t_nn / t_train,
                                 target=">= 2.0x" if H == 64 else ">= 1.5x"))
                t_nn = median_s(infer_step(ref, x), mrt)
                t_cpu = median_s(infer_step(fused, x), mrt)
                rows.append(dict(case="fwd no-grad", cell=cell, T=T, B=B, H=H,
                                 torch_nn_ms=1e3 * t_nn, fusedrnn_ms=1e3 * t_cpu,
                                 ratio=t_nn / t_cpu,
                                 target=">= 1.2x" if H == 64 else ">= 1.0x"))
                if H == 64:
                    t_ref = median_s(train_step(refb, x, g), mrt)
                    rows.append(dict(case="fwd+bwd vs reference", cell=cell, T=T, B=B, H=H,
                                     torch_nn_ms=1e3 * t_ref, fusedrnn_ms=1e3 * t_train,
                                     ratio=t_ref / t_train, target=">= 5x",
                                     baseline="reference backend"))
                print(f"done {cell} T={T} H={H}", flush=True)


def bench_cell_step(rows, mrt):
    torch.manual_seed(0)
    H = 128
    ref = torch.nn.LSTMCell(H, H)
    fused = fusedrnn.LSTMCell(H, H, backend="cpu")
    fused.load_state_dict(ref.state_dict())
    x, h, c = torch.randn(1, H), torch.randn(1, H), torch.randn(1, H)

    def step(m):
        def fn():
            with torch.no_grad():
                m(x, (h, c))
        return fn

    w = [p.detach() for p in (ref.weight_ih, ref.bias_ih, ref.weight_hh, ref.bias_hh)]

    def raw():
        cpu_ops.cell_step("LSTM", x, w[0], w[1], w[2], w[3], h, c)

    t_nn = median_s(step(ref), mrt)
    t_cell = median_s(step(fused), mrt)
    t_raw = median_s(raw, mrt)
    rows.append(dict(case="LSTMCell step (nn cell)", cell="LSTM", T=1, B=1, H=H,
                     torch_nn_ms=1e3 * t_nn, fusedrnn_ms=1e3 * t_cell, ratio=t_nn / t_cell,
                     target=">= 2x"))
    rows.append(dict(case="LSTMCell step (ops.cpu.cell_step)", cell="LSTM", T=1, B=1, H=H,
                     torch_nn_ms=1e3 * t_nn, fusedrnn_ms=1e3 * t_raw, ratio=t_nn / t_raw,
                     target=">= 2x"))


def bench_memory(rows, T=512, B=32, H=256):
    for cell in CELLS:
        ref, fused, _ = make_layers(cell, H)
        x = torch.randn(T, B, H, requires_grad=True)
        g = torch.randn(T, B, H)
        peaks = []
        for m in (ref, fused):
            fn = train_step(m, x, g)
            fn()
            peaks.append(peak_bytes(fn) / 2**20)
        rows.append(dict(case="peak training memory (MiB)", cell=cell, T=T, B=B, H=H,
                         torch_nn_ms=peaks[0], fusedrnn_ms=peaks[1], ratio=peaks[0] / peaks[1],
                         target="<= torch.nn"))


def table(rows, title) -> str:
    out = [f"Machine: {title}", "",
           "| case | cell | T | B | H | baseline | fusedrnn | ratio | target |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        unit = "MiB" if "memory" in r["case"] else "ms"
        base = r.get("baseline", "torch.nn")
        out.append(f"| {r['case']} | {r['cell']} | {r['T']} | {r['B']} | {r['H']} | "
                   f"{base} {r['torch_nn_ms']:.3f} {unit} | {r['fusedrnn_ms']:.3f} {unit} | "
                   f"{r['ratio']:.2f}x | {r['target']} |")
    return "\n".join(out)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['case']}\n{r['cell']} T{r['T']} H{r['H']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows)), 5))
    ax.bar(range(len(rows)), [r["ratio"] for r in rows])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)), labels, rotation=90, fontsize=6)
    ax.set_ylabel("baseline / fusedrnn (higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    ap.add_argument("--quick", action="store_true", help="T=64, H=64 only")
    args = ap.parse_args()
    if cpu_ops.unavailable():
        raise SystemExit(f"backend 'cpu' unavailable: {cpu_ops.unavailable()}")
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    Ts, Hs = ((64,), (64,)) if args.quick else ((64, 512), (64, 256))
    bench_layers(rows, Ts, Hs, 32, args.min_run_time)
    bench_cell_step(rows, args.min_run_time)
    if not args.quick:
        bench_memory(rows)
    title = machine()
    md = table(rows, title)
    print(md)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_cpu.json"), "w") as f:
        json.dump(dict(machine=title, rows=rows), f, indent=1)
    with open(os.path.join(args.out, "bench_cpu.md"), "w") as f:
        f.write(md + "\n")
    plot(rows, os.path.join(args.out, "bench_cpu.png"))


if __name__ == "__main__":
    main()
