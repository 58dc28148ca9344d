"""The sweep's outputs: the stdout table, results.json, results.csv and results.md."""

from __future__ import annotations

import csv
import json
import os

from .machine import describe
from .sweep import ROW_FIELDS

HEADER = ("T", "backend", "median", "per step", "tokens/s", "vs torch.nn", "peak mem", "parity")


def _time(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} us"


def _si(x: float | None) -> str:
    if x is None:
        return "-"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _mem(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.1f} MiB"


def _parity(r: dict) -> str:
    st = r["status"]
    if st == "baseline":
        return "f64 err %.1e" % r["parity_err"] if r["parity_err"] is not None else "baseline"
    if st == "ok":
        return "ok %.1e" % r["parity_err"] + (f" ({r['note']})" if r["note"] else "")
    if st == "PARITY FAIL":
        return "PARITY FAIL %.1e > %.1e" % (r["parity_err"], r["parity_bound"])
    return f"{st}: {r['note']}" if r["note"] else st


def _cells(r: dict) -> tuple[str, ...]:
    sp = r["speedup_vs_torch"]
    return (str(r["seq_len"]), r["backend"], _time(r["median_s"]),
            "-" if r["per_step_us"] is None else f"{r['per_step_us']:.1f} us",
            _si(r["tokens_per_s"]), "-" if sp is None else f"{sp:.2f}x",
            _mem(r["peak_mem_bytes"]), _parity(r))


def _groups(rows: list[dict]):
    seen = {}
    for r in rows:
        seen.setdefault((r["cell"], r["mode"]), []).append(r)
    return seen.items()


def _title(cell: str, mode: str, r: dict) -> str:
    what = "forward, no grad" if mode == "fwd" else "forward + backward"
    return (f"{cell} {mode} ({what}): B={r['batch']}, I={r['input']}, H={r['hidden']}, "
            f"{r['dtype']}, {r['device']}")


def format_table(rows: list[dict], info: dict) -> str:
    """The stdout table: one section per (cell, mode), one line per (T, backend)."""
    lines = [f"machine: {describe(info)}",
             "vs torch.nn = torch.nn's median / this median (>1: faster than torch.nn)", ""]
    for (cell, mode), rs in _groups(rows):
        body = [_cells(r) for r in rs]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(HEADER)]
        fmt = "  ".join(f"{{:{'<' if i in (1, 7) else '>'}{w}}}" for i, w in enumerate(widths))
        lines += [f"== {_title(cell, mode, rs[0])}", fmt.format(*HEADER).rstrip()]
        lines += [fmt.format(*b).rstrip() for b in body] + [""]
    return "\n".join(lines)


def format_markdown(rows: list[dict], info: dict, meta: dict) -> str:
    """results.md: the machine, the methods, a speedup summary and the full tables."""
    out = [f"Machine: {describe(info)}  ", f"Command: `{meta['command']}`  ",
           f"Wall time of the sweep: {meta['wall_time_s']:.0f} s  ",
           f"Timing: {meta['timing_method']}  ", f"Peak memory: {meta['memory_method']}  ",
           f"Parity: {meta['parity_rule']}", ""]
    out += ["### Speedup vs torch.nn (median time of torch.nn / median time of the backend)", ""]
    out += _summary(rows) + [""]
    for (cell, mode), rs in _groups(rows):
        out += [f"### {_title(cell, mode, rs[0])}", "",
                "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        out += ["| " + " | ".join(_cells(r)) + " |" for r in rs] + [""]
    return "\n".join(out)


def _summary(rows: list[dict]) -> list[str]:
    """Speedup per (cell, mode, backend) row and T column."""
    Ts = sorted({r["seq_len"] for r in rows})
    table = {}
    for r in rows:
        if r["status"] == "baseline":
            continue
        key = (r["cell"], r["mode"], r["backend"])
        sp = r["speedup_vs_torch"]
        table.setdefault(key, {})[r["seq_len"]] = (
            f"{sp:.2f}x" if sp is not None else ("FAIL" if r["status"] == "PARITY FAIL" else "-"))
    head = ["cell", "mode", "backend", *(f"T={t}" for t in Ts)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (cell, mode, b), v in table.items():
        lines.append("| " + " | ".join([cell, mode, b, *(v.get(t, "-") for t in Ts)]) + " |")
    return lines


def write_outputs(out_dir: str, rows: list[dict], info: dict, config: dict, meta: dict) -> dict:
    """Write results.json, results.csv and results.md into ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"results.{k}") for k in ("json", "csv", "md")}
    doc = {"schema": "fusedrnn-bench/1", "machine": info, "config": config, **meta, "results": rows}
    with open(paths["json"], "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    with open(paths["csv"], "w", newline="") as f:
        # machine info as leading comment lines, so the CSV names its machine too
        f.write(f"# machine: {describe(info)}\n# command: {meta['command']}\n")
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        w.writeheader()
        w.writerows(rows)
    with open(paths["md"], "w") as f:
        f.write(format_markdown(rows, info, meta) + "\n")
    return paths
