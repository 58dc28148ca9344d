"""``fusedrnn-bench`` / ``python -m fusedrnn.bench``: the sequence-length sweep."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch

import fusedrnn

from . import cases, report, timing
from .machine import machine_info
from .plots import write_plots
from .sweep import Config, run_sweep

DEFAULTS = dict(batch=32, hidden=64, input=None, seq_lens=[2**k for k in range(4, 13)],
                repeats=10, max_case_time=1.0, reference_max_t=4096)
#: --quick: a reduced sweep that finishes in well under a minute on 2 cores
QUICK = dict(batch=8, hidden=32, input=None, seq_lens=[16, 64, 256], repeats=5,
             max_case_time=0.05, reference_max_t=256)


def default_cells() -> list[str]:
    """RNN, LSTM, GRU, and MinGRU, MinLSTM when this fusedrnn has them."""
    return list(cases.CLASSIC) + [c for c in cases.PARALLEL if hasattr(fusedrnn, c)]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusedrnn-bench",
        description="Sweep sequence length for RNN/LSTM/GRU (and MinGRU/MinLSTM) on every "
                    "fusedrnn backend against torch.nn, forward and forward+backward. Prints a "
                    "table and writes results.json, results.csv, results.md and two plots.",
        epilog="Every timed row was first checked against a float64 run on the same weights; "
               "a backend that differs is reported as PARITY FAIL and not timed. To time the "
               "Triton interpreter on CPU, set TRITON_INTERPRET=1 and pass --backends triton.")
    p.add_argument("--batch", type=int, help=f"batch size B (default {DEFAULTS['batch']})")
    p.add_argument("--hidden", type=int, help=f"hidden size H (default {DEFAULTS['hidden']})")
    p.add_argument("--input", type=int, help="input size I (default: the hidden size)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--cells", nargs="+", choices=cases.CELLS,
                   help="cells to sweep (default: RNN LSTM GRU, plus MinGRU MinLSTM if present)")
    p.add_argument("--backends", nargs="+", choices=["reference", "cpu", "triton", "cuda"],
                   help="fusedrnn backends (default: the device's usual ones that can run "
                        "here; torch.nn always runs as the baseline)")
    p.add_argument("--modes", nargs="+", choices=cases.MODES, default=list(cases.MODES))
    p.add_argument("--seq-lens", nargs="+", type=int,
                   help="sequence lengths T (default 16 32 ... 4096)")
    p.add_argument("--repeats", type=int,
                   help=f"target timed calls per case (default {DEFAULTS['repeats']}; slow "
                        "cases get fewer, at least 3, short ones are timed in blocks)")
    p.add_argument("--max-case-time", type=float,
                   help="seconds of timing per case when --repeats calls do not fit "
                        f"(default {DEFAULTS['max_case_time']})")
    p.add_argument("--reference-max-t", type=int,
                   help="longest T for the reference backend, a Python time loop "
                        f"(default {DEFAULTS['reference_max_t']})")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory call (on CPU it runs under the profiler)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_out", help="output directory (default bench_out)")
    p.add_argument("--quick", action="store_true",
                   help="reduced sweep (B=8, H=32, T in 16 64 256, short timing): < 1 min")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--no-plots", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """The sweep's Config: explicit options win over the --quick preset over the defaults."""
    preset = QUICK if args.quick else DEFAULTS

    def pick(name):
        v = getattr(args, name)
        return preset[name] if v is None else v

    hidden = pick("hidden")
    cfg = Config(cells=args.cells or default_cells(), modes=args.modes,
                 seq_lens=sorted(set(pick("seq_lens"))), batch=pick("batch"), hidden=hidden,
                 input=args.input or preset["input"] or hidden, dtype=args.dtype,
                 device=args.device, backends=args.backends, repeats=pick("repeats"),
                 max_case_time=pick("max_case_time"), reference_max_t=pick("reference_max_t"),
                 memory=not args.no_memory, seed=args.seed)
    for name in ("batch", "hidden", "input", "repeats"):
        if getattr(cfg, name) <= 0:
            raise SystemExit(f"fusedrnn-bench: --{name} must be positive, got {getattr(cfg, name)}")
    if min(cfg.seq_lens) <= 0:
        raise SystemExit(f"fusedrnn-bench: --seq-lens must be positive, got {cfg.seq_lens}")
    if torch.device(cfg.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("fusedrnn-bench: --device cuda, but torch sees no CUDA device")
    missing = [c for c in cfg.cells if c in cases.PARALLEL and not hasattr(fusedrnn, c)]
    if missing:
        cfg.notes.append(f"{', '.join(missing)}: not in this fusedrnn, skipped")
        cfg.cells = [c for c in cfg.cells if c not in missing]
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Run the sweep from the command line; returns 1 when a row failed parity or errored."""
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    if not args.cells and not all(hasattr(fusedrnn, c) for c in cases.PARALLEL):
        cfg.notes.append("MinGRU/MinLSTM are not in this fusedrnn yet: skipped")
    info = machine_info()
    if info["loadavg"] and info["loadavg"][0] > 0.5 * info["cores"]:
        cfg.notes.append(f"the machine is busy (load average {info['loadavg'][0]:.1f} on "
                         f"{info['cores']} cores): timings will be noisy")
    for note in cfg.notes:
        print("note:", note)
    t0 = time.perf_counter()
    rows = run_sweep(cfg, progress_bar=not args.no_progress)
    wall = time.perf_counter() - t0
    dev = torch.device(cfg.device).type
    meta = {
        "command": "fusedrnn-bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        "wall_time_s": wall,
        "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "timing_method": timing.TIMING_METHOD[dev],
        "memory_method": timing.MEMORY_METHOD[dev] if cfg.memory else "not measured (--no-memory)",
        "parity_rule": "every output, final state and (fwdbwd) parameter gradient vs the same "
                       "model in float64 on the same weights; error = max|got-f64|/max|f64|; "
                       "pass when <= max(dtype floor, 2 x the same-dtype torch.nn error) "
                       "(min cells: 2 x the same-dtype reference backend's error)",
        "notes": [n.splitlines()[0] for n in cfg.notes],
    }
    print()
    print(report.format_table(rows, info))
    paths = report.write_outputs(args.out, rows, info, cfg.asdict(), meta)
    if not args.no_plots:
        paths.update(zip(("plot_time", "plot_per_step"), write_plots(args.out, rows, info)))
    for note in cfg.notes:
        print("note:", note)
    print(f"wall time {wall:.0f} s; wrote " + ", ".join(paths.values()))
    bad = [r for r in rows if r["status"] in ("PARITY FAIL", "ERROR")]
    if bad:
        print(f"{len(bad)} row(s) failed parity or errored: see the table above", file=sys.stderr)
        return 1
    return 0
