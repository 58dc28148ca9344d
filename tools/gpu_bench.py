"""Time the fused layers against cuDNN (torch.nn on CUDA): the first measured GPU table.

    python tools/gpu_bench.py --out OUTDIR [--budget 120]

Rows (layer level: input GEMM + recurrence, batch-first input, one layer, one direction):

* anchor: LSTM B=16, T=1024, I=H=768, bf16 -- FlashRNN's chart point (cuDNN on an H100:
  2.01 ms forward, 5.19 ms forward+backward);
* sweep: LSTM, GRU, RNN (tanh) at B=32, I=H=64, fp32, T = 16, 64, 256, 1024, 4096 (the CPU
  sweep's default shapes).

Backends: ``torch.nn`` (cuDNN), ``triton`` (the default plan: no grid barrier until validated),
``triton+barrier`` (grid barrier enabled: FUSEDRNN_TRITON_GRID_BARRIER semantics; only where
the plan differs), ``cuda`` (when its extension is built). Modes: ``fwd`` (no grad) and
``fwd+bwd`` (forward, ``sum(out)`` backward). Every row is first checked against torch.nn in
fp32 on the same (rounded) weights and inputs; a row whose error is over its bound is timed but
flagged, and no speed-up is reported for it. Time: ``triton.testing.do_bench`` median (L2
flushed between calls) after warm-up. Rows past ``--budget`` seconds are skipped and listed.
Writes OUTDIR/bench.json, bench.md and, when matplotlib imports, bench_sweep.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

import fusedrnn  # noqa: E402

CELLS = {"LSTM": (torch.nn.LSTM, fusedrnn.LSTM), "GRU": (torch.nn.GRU, fusedrnn.GRU),
         "RNN": (torch.nn.RNN, fusedrnn.RNN)}
ANCHOR = dict(cell="LSTM", B=16, T=1024, H=768, dtype="bf16")
CUDNN_H100 = {"fwd": 2.01, "fwd+bwd": 5.19}  # ms, FlashRNN's published chart
SWEEP_T = (16, 64, 256, 1024, 4096)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
#: parity bound: max |out - torch.nn fp32| / max |torch.nn fp32| (bf16: rounded products over
#: T steps; fp32: cuDNN and our fp32 path both use TF32-based products)
BOUND = {"bf16": 5e-2, "fp32": 2e-3}


def _layers(cell, H, dtype, backend, device):
    torch.manual_seed(0)
    ref = CELLS[cell][0](H, H, batch_first=True).to(device)
    m = CELLS[cell][1](H, H, batch_first=True, backend=backend).to(device)
    m.load_state_dict(ref.state_dict())
    return ref.to(dtype), m.to(dtype)


def _parity(ref, m, x) -> float:
    with torch.no_grad():
        want = ref.float()(x.float())[0]
        ref.to(x.dtype)
        got = m(x)[0].float()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def _timer(m, x, mode):
    params = list(m.parameters())
    if mode == "fwd":
        def call():
            with torch.no_grad():
                m(x)
        return call, None
    xg = x.detach().requires_grad_()

    def call():
        out, _ = m(xg)
        out.float().sum().backward()
    return call, [xg] + params


def _variants(cuda_ok):
    out = [("torch.nn", None, None), ("triton", "triton", False), ("triton+barrier", "triton", True)]
    if cuda_ok:
        out.append(("cuda", "cuda", None))
    return out


def bench(out_dir: str, budget: float, device="cuda", cases=None) -> dict:
    """Time ``cases`` (default: the anchor and the sweep) on ``device``; returns the result dict
    ``write`` takes. (tests/test_gpu_tools.py runs it on a tiny case in the interpreter.)"""
    from triton.testing import do_bench

    from fusedrnn.ops.triton import launch, validated

    start = time.time()
    cuda_ok = "cuda" in fusedrnn.available_backends()
    rows, skipped = [], []
    cases = cases or [dict(ANCHOR, kind="anchor")] + [
        dict(cell=c, B=32, T=T, H=64, dtype="fp32", kind="sweep") for c in CELLS for T in SWEEP_T]
    for case in cases:
        dt = DTYPES[case["dtype"]]
        x = torch.randn(case["B"], case["T"], case["H"], device=device).to(dt)
        mode_name = {"LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN_TANH"}[case["cell"]]
        for name, backend, barrier in _variants(cuda_ok):
            if name == "triton+barrier":
                pl = launch.layer_plan(mode_name, case["H"], case["H"], case["B"], dt, False,
                                       x.device)
                validated.allow_grid_barrier(True)
                pl_b = launch.layer_plan(mode_name, case["H"], case["H"], case["B"], dt, False,
                                         x.device)
                if pl_b == pl:  # the same kernels as "triton": nothing new to time
                    validated.allow_grid_barrier(None)
                    continue
            elif name == "triton":
                validated.allow_grid_barrier(False)
            try:
                for mode in ("fwd", "fwd+bwd"):
                    row = dict(case, backend=name, mode=mode)
                    if time.time() - start > budget:
                        skipped.append(row)
                        continue
                    try:
                        ref, m = _layers(case["cell"], case["H"], dt, backend or "auto", device)
                        if backend is None:
                            m = ref
                        if backend == "triton":
                            pl = launch.layer_plan(mode_name, case["H"], case["H"], case["B"], dt,
                                                   False, x.device)
                            row["path"] = f"{pl.path} {pl.BU}x{pl.n_tiles}"
                        row["rel_err"] = 0.0 if backend is None else _parity(ref, m, x)
                        row["parity_ok"] = row["rel_err"] <= BOUND[case["dtype"]]
                        call, grads = _timer(m, x, mode)
                        ms = do_bench(call, warmup=10, rep=60, grad_to_none=grads,
                                      return_mode="median")
                        row["ms"] = float(ms)
                        row["us_per_step"] = 1000.0 * ms / case["T"]
                    except Exception as e:  # a failing backend is a result, not the end of the run
                        row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                    rows.append(row)
                    print(_fmt(row), flush=True)
            finally:
                validated.allow_grid_barrier(None)
    _speedups(rows)
    return dict(rows=rows, skipped=skipped, wall_s=round(time.time() - start, 1),
                cudnn_h100_published_ms=CUDNN_H100, parity_bound=BOUND,
                method="triton.testing.do_bench median, warmup 10 ms, rep 60 ms; layer level "
                       "(input GEMM + recurrence), batch_first, 1 layer, 1 direction")


def _speedups(rows):
    """speed-up over torch.nn (cuDNN) of the same case and mode, where parity holds."""
    base = {(r["cell"], r["T"], r["H"], r["dtype"], r["mode"]): r.get("ms")
            for r in rows if r["backend"] == "torch.nn"}
    for r in rows:
        b = base.get((r["cell"], r["T"], r["H"], r["dtype"], r["mode"]))
        if r["backend"] != "torch.nn" and b and r.get("ms") and r.get("parity_ok"):
            r["speedup_vs_cudnn"] = b / r["ms"]


def _fmt(r) -> str:
    head = f"{r['cell']:<5} B={r['B']:<3} T={r['T']:<5} H={r['H']:<4} {r['dtype']} {r['mode']:<8} {r['backend']:<15}"
    if "error" in r:
        return f"{head} ERROR {r['error']}"
    flag = "" if r.get("parity_ok", True) else f"  PARITY FAIL (rel err {r['rel_err']:.2e})"
    return f"{head} {r['ms']:9.3f} ms {r['us_per_step']:8.2f} us/step{flag}"


def write(result: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    lines = ["| cell | B | T | H | dtype | mode | backend | path | ms | µs/step | vs cuDNN | rel err |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        sp = "%.2f×" % r["speedup_vs_cudnn"] if "speedup_vs_cudnn" in r else ""
        ms = r.get("ms")
        t = ("", "") if ms is None else ("%.3f" % ms, "%.2f" % r["us_per_step"])
        err = r.get("error") or ("" if r.get("parity_ok", True) else "FAIL ") + "%.1e" % r.get("rel_err", 0)
        lines.append(f"| {r['cell']} | {r['B']} | {r['T']} | {r['H']} | {r['dtype']} | "
                     f"{r['mode']} | {r['backend']} | {r.get('path', '')} | {t[0]} | {t[1]} | "
                     f"{sp} | {err} |")
    lines.append(f"\ncuDNN on an H100 (FlashRNN's chart) at the anchor: "
                 f"{CUDNN_H100['fwd']} ms forward, {CUDNN_H100['fwd+bwd']} ms forward+backward.")
    if result["skipped"]:
        lines.append(f"\nSkipped (time budget): {len(result['skipped'])} rows.")
    with open(os.path.join(out_dir, "bench.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    _plot(result, out_dir)


def _plot(result, out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("gpu_bench: matplotlib is not importable: no plot (bring it as a wheel, "
              "docs/gpu_check.md)")
        return
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    for j, cell in enumerate(CELLS):
        for i, mode in enumerate(("fwd", "fwd+bwd")):
            ax = axes[i][j]
            for backend in sorted({r["backend"] for r in result["rows"]}):
                pts = sorted((r["T"], r["us_per_step"]) for r in result["rows"]
                             if r["kind"] == "sweep" and r["cell"] == cell and r["mode"] == mode
                             and r["backend"] == backend and "ms" in r)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=backend)
            ax.set(xscale="log", yscale="log", title=f"{cell} {mode}, B=32 H=64 fp32",
                   xlabel="T", ylabel="µs per step")
            if ax.lines:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "bench_sweep.png"), dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=120.0, help="seconds before rows are skipped")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device")
        return 0
    result = bench(args.out, args.budget)
    write(result, args.out)
    bad = [r for r in result["rows"] if "error" in r or not r.get("parity_ok", True)]
    print(f"gpu_bench: {len(result['rows'])} rows, {len(bad)} with an error or parity failure, "
          f"{len(result['skipped'])} skipped, {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
