"""CPU backend vs torch.nn and ONNX Runtime: the performance table of the CPU backend (v2).

    python benchmarks/bench_cpu.py [--threads 2] [--rounds 5] [--out benchmarks/results]

Every number comes from this one process. Each comparison is interleaved: per round, the
baseline and fusedrnn are each timed (torch.utils.benchmark medians after warm-up), and the
reported ratio is the median over rounds of baseline time / fusedrnn time (> 1: fusedrnn is
faster), with the lowest and highest round beside it. The machine (CPU model, the instruction
set the kernels dispatched to, threads) heads the table. Writes bench_cpu.json, bench_cpu.md and
bench_cpu.png to --out. Machines are shared and noisy: rerun before quoting a single cell.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics

import torch
import torch.utils.benchmark as tb
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn
from fusedrnn.ops import cpu as cpu_ops

try:
    from _mem import peak_bytes
except ImportError:  # run as a module from the repository root
    from benchmarks._mem import peak_bytes

CELLS = {"LSTM": (torch.nn.LSTM, fusedrnn.LSTM, 4), "GRU": (torch.nn.GRU, fusedrnn.GRU, 3),
         "RNN": (torch.nn.RNN, fusedrnn.RNN, 1)}
STEP_CELLS = {"LSTMCell": (torch.nn.LSTMCell, fusedrnn.LSTMCell),
              "GRUCell": (torch.nn.GRUCell, fusedrnn.GRUCell),
              "RNNCell": (torch.nn.RNNCell, fusedrnn.RNNCell)}


def machine() -> str:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{model}, {os.cpu_count()} logical cores, kernels: {fusedrnn._ext._C._cpu_isa()} "
            f"(this CPU: {', '.join(fusedrnn._ext._C._cpu_isas())}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def median_s(fn, min_run_time: float) -> float:
    fn()  # warm-up (allocator, MKL/oneDNN primitive caches)
    fn()
    # Timer runs its statement on num_threads threads, 1 unless told (it sets torch's count for
    # the measurement): ask for the process's count, the one the table names
    return tb.Timer(stmt="fn()", globals={"fn": fn},
                    num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time).median


def interleaved(base, ours, rounds: int, mrt: float):
    """(median baseline s, median fusedrnn s, median ratio, min ratio, max ratio) over rounds
    of back-to-back timings."""
    tb_, to_, ratios = [], [], []
    for _ in range(rounds):
        a, b = median_s(base, mrt), median_s(ours, mrt)
        tb_.append(a)
        to_.append(b)
        ratios.append(a / b)
    return statistics.median(tb_), statistics.median(to_), statistics.median(ratios), \
        min(ratios), max(ratios)


def row(case, cell, T, B, H, base_name, res, target, unit="ms", **extra):
    tb_, to_, r, lo, hi = res
    scale = 1e3 if unit == "ms" else 1.0
    return dict(case=case, cell=cell, T=T, B=B, H=H, baseline=base_name,
                baseline_val=scale * tb_, fusedrnn_val=scale * to_, ratio=r, ratio_min=lo,
                ratio_max=hi, unit=unit, target=target, **extra)


def make_layers(cell: str, H: int, seed: int = 0):
    torch.manual_seed(seed)
    ref_cls, fused_cls, _ = CELLS[cell]
    ref = ref_cls(H, H)
    fused = fused_cls(H, H, backend="cpu")
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def train_step(m, x, g):
    def fn():
        y, _ = m(x)
        y = y.data if hasattr(y, "batch_sizes") else y
        y.backward(g)
    return fn


def infer_step(m, x):
    def fn():
        with torch.no_grad():
            m(x)
    return fn


def layer_flops(cell: str, T: int, B: int, H: int) -> float:
    """Forward multiply-adds x 2 of one layer with I = H: input projection + recurrence."""
    return 2.0 * T * B * CELLS[cell][2] * H * (H + H)


def bench_layers(rows, T, B, Hs, rounds, mrt, sgemm_gflops):
    for H in Hs:
        for cell in CELLS:
            ref, fused = make_layers(cell, H)
            x = torch.randn(T, B, H, requires_grad=True)
            g = torch.randn(T, B, H)
            res = interleaved(train_step(ref, x, g), train_step(fused, x, g), rounds, mrt)
            rows.append(row("fwd+bwd", cell, T, B, H, "torch.nn", res,
                            ">= 2.0x" if H == 64 else ">= 1.3x"))
            res = interleaved(infer_step(ref, x), infer_step(fused, x), rounds, mrt)
            gflops = layer_flops(cell, T, B, H) / res[1] / 1e9
            rows.append(row("fwd no-grad", cell, T, B, H, "torch.nn", res,
                            ">= 1.5x" if H == 64 else ">= 1.0x", gflops=gflops,
                            sgemm_fraction=gflops / sgemm_gflops))
            print(f"done {cell} H={H}", flush=True)


def bench_padding(rows, T, B, H, rounds, mrt):
    """A packed batch, half of its rows of length T and half T/8, against the full batch: its
    time over the full batch's, divided by its share of the work (target <= 1.15)."""
    lengths = torch.tensor([T if b % 2 == 0 else T // 8 for b in range(B)])
    frac = float(lengths.sum()) / (T * B)
    for cell in ("LSTM", "GRU"):
        _, fused = make_layers(cell, H)
        x = torch.randn(T, B, H, requires_grad=True)
        g = torch.randn(T, B, H)
        p = pack_padded_sequence(x.detach(), lengths, enforce_sorted=False)
        packed = PackedSequence(p.data.requires_grad_(), p.batch_sizes, p.sorted_indices,
                                p.unsorted_indices)  # a leaf, as the full batch's x
        g_packed = torch.randn(packed.data.shape)
        for case, full, part in (
                ("padding no-grad", infer_step(fused, x), infer_step(fused, packed)),
                ("padding fwd+bwd", train_step(fused, x, g), train_step(fused, packed, g_packed))):
            res = interleaved(full, part, rounds, mrt)
            cost = 1.0 / res[2]  # packed time / full time
            rows.append(row(case, cell, T, B, H, "full batch", res, "cost/work <= 1.15",
                            work_fraction=frac, cost_over_work=cost / frac))


def bench_cell_steps(rows, Hs, rounds, mrt):
    for H in Hs:
        for name, (ref_cls, fused_cls) in STEP_CELLS.items():
            torch.manual_seed(0)
            ref, fused = ref_cls(H, H), fused_cls(H, H, backend="cpu")
            fused.load_state_dict(ref.state_dict())
            x, h = torch.randn(1, H), torch.randn(1, H)
            state = (h, h.clone()) if name == "LSTMCell" else h

            def step(m):
                def fn():
                    with torch.no_grad():
                        m(x, state)
                return fn

            res = interleaved(step(ref), step(fused), rounds, mrt)
            rows.append(row(f"{name} step", name, 1, 1, H, "torch.nn", res, ">= 2x", unit="us")
                        | dict(baseline_val=1e6 * res[0], fusedrnn_val=1e6 * res[1]))


def _ort_session(model, x, threads):
    import onnxruntime as ort

    f = io.BytesIO()
    torch.onnx.export(model, (x,), f, dynamo=False, input_names=["x"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"])


def bench_ort(rows, T, Bs, Hs, threads, rounds, mrt):
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnxruntime not installed (pip install onnxruntime onnx): ORT rows skipped")
        return
    import warnings
    for H in Hs:
        for B in Bs:
            for cell in ("LSTM", "GRU"):
                ref, fused = make_layers(cell, H)
                ref.eval()
                x = torch.randn(T, B, H)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sess = _ort_session(ref, x, threads)
                xn = x.numpy()
                got = torch.from_numpy(sess.run(None, {"x": xn})[0])
                with torch.no_grad():
                    want = fused(x)[0]
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # same function

                def ort_run():
                    sess.run(None, {"x": xn})

                res = interleaved(ort_run, infer_step(fused, x), rounds, mrt)
                rows.append(row("no-grad vs ONNX Runtime", cell, T, B, H, "onnxruntime", res,
                                ">= 1.0x"))
                print(f"done ORT {cell} B={B} H={H}", flush=True)


def sgemm_gflops(mrt: float) -> float:
    """The machine's big-sgemm rate (2048^3, torch.mm on the same threads), for scale."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2.0 * n ** 3 / median_s(lambda: torch.mm(a, b), mrt) / 1e9


def bench_memory(rows, T=512, B=32, H=256):
    for cell in CELLS:
        ref, fused = make_layers(cell, H)
        x = torch.randn(T, B, H, requires_grad=True)
        g = torch.randn(T, B, H)
        peaks = []
        for m in (ref, fused):
            fn = train_step(m, x, g)
            fn()
            peaks.append(peak_bytes(fn) / 2**20)
        rows.append(dict(case="peak training memory", cell=cell, T=T, B=B, H=H,
                         baseline="torch.nn", baseline_val=peaks[0], fusedrnn_val=peaks[1],
                         ratio=peaks[0] / peaks[1], ratio_min=None, ratio_max=None, unit="MiB",
                         target="<= torch.nn"))


def table(rows, title, sgemm) -> str:
    out = [f"Machine: {title}", f"Big sgemm (2048^3, torch.mm, same threads): {sgemm:.1f} GFLOP/s",
           "", "| case | cell | T | B | H | baseline | fusedrnn | ratio (min-max) | target | note |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        u = r["unit"]
        spread = "" if r["ratio_min"] is None else f" ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
        note = ""
        if "gflops" in r:
            note = f"{r['gflops']:.1f} GFLOP/s = {100 * r['sgemm_fraction']:.0f} % of sgemm"
        if "cost_over_work" in r:
            note = (f"work {100 * r['work_fraction']:.0f} %, cost {100 / r['ratio']:.0f} %: "
                    f"cost/work {r['cost_over_work']:.2f}")
        out.append(f"| {r['case']} | {r['cell']} | {r['T']} | {r['B']} | {r['H']} | "
                   f"{r['baseline']} {r['baseline_val']:.3f} {u} | {r['fusedrnn_val']:.3f} {u} | "
                   f"{r['ratio']:.2f}x{spread} | {r['target']} | {note} |")
    return "\n".join(out)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['case']}\n{r['cell']} B{r['B']} H{r['H']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows)), 5))
    ax.bar(range(len(rows)), [r["ratio"] for r in rows])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)), labels, rotation=90, fontsize=6)
    ax.set_ylabel("baseline / fusedrnn (higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


PARTS = ("layers", "ort", "padding", "cells", "memory")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per comparison")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--min-run-time", type=float, default=0.3, help="seconds per measurement")
    ap.add_argument("--quick", action="store_true", help="small shapes, 1 round (smoke test)")
    ap.add_argument("--only", default=None,
                    help="comma-separated parts to run: " + ",".join(PARTS) + " (default: all)")
    args = ap.parse_args()
    only = set(PARTS) if args.only is None else set(args.only.split(","))
    if not only <= set(PARTS):
        ap.error(f"--only: unknown part(s) {sorted(only - set(PARTS))}; choose from {PARTS}")
    if cpu_ops.unavailable():
        raise SystemExit(f"backend 'cpu' unavailable: {cpu_ops.unavailable()}")
    torch.set_num_threads(args.threads)
    rounds, mrt = (1, 0.05) if args.quick else (args.rounds, args.min_run_time)
    T, Hs = (32, (64,)) if args.quick else (256, (64, 256))
    rows: list[dict] = []
    sgemm = sgemm_gflops(mrt)
    if "layers" in only:
        bench_layers(rows, T, 32, Hs, rounds, mrt, sgemm)
    if "ort" in only:
        bench_ort(rows, T, (1, 32), Hs, args.threads, rounds, mrt)
    if "padding" in only:
        bench_padding(rows, 64 if args.quick else 512, 32, 64, rounds, mrt)
    if "cells" in only:
        bench_cell_steps(rows, Hs, rounds, mrt)
    if "memory" in only and not args.quick:
        bench_memory(rows)
    title = machine()
    md = table(rows, title, sgemm)
    print(md)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_cpu.json"), "w") as f:
        json.dump(dict(machine=title, sgemm_gflops=sgemm, rows=rows), f, indent=1)
    with open(os.path.join(args.out, "bench_cpu.md"), "w") as f:
        f.write(md + "\n")
    plot(rows, os.path.join(args.out, "bench_cpu.png"))


if __name__ == "__main__":
    main()
