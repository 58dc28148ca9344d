"""The sweep's plots (matplotlib, Agg backend: no display needed).

* ``time_vs_T.png``: median time against T, log-log, one panel per (cell, mode), one line per
  backend with torch.nn as the baseline.
* ``time_per_step_vs_T.png``: median time / T against T. A fused loop has a flat per-step
  cost; Python or per-step-op overheads show up as a high floor, a parallel scan as a falling
  line.
"""

from __future__ import annotations

import os

from .machine import describe

STYLE = {"reference": ("tab:gray", "s"), "cpu": ("tab:blue", "o"), "triton": ("tab:green", "^"),
         "cuda": ("tab:purple", "v")}


def _series(rows, cell, mode, key):
    """{backend: ([T...], [value...])} of timed rows of one panel."""
    out = {}
    for r in rows:
        if r["cell"] == cell and r["mode"] == mode and r["median_s"] is not None:
            xs, ys = out.setdefault(r["backend"], ([], []))
            xs.append(r["seq_len"])
            ys.append(key(r))
    return out


def _figure(rows, info, key, ylabel, fname, out_dir, subtitle):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["cell"], r["mode"]) for r in rows))
    cells = list(dict.fromkeys(c for c, _ in panels))
    modes = list(dict.fromkeys(m for _, m in panels))
    fig, axes = plt.subplots(len(cells), len(modes), figsize=(5.2 * len(modes), 3.6 * len(cells)),
                             squeeze=False)
    for i, cell in enumerate(cells):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for backend, (xs, ys) in _series(rows, cell, mode, key).items():
                base = backend.startswith("torch.nn")
                color, marker = ("black", "x") if base else STYLE.get(backend, (None, "o"))
                ax.plot(xs, ys, marker=marker, color=color, linestyle="--" if base else "-",
                        label=backend, markersize=4)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{cell} {mode}", fontsize=10)
            ax.set_xlabel("sequence length T")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    r0 = rows[0]
    fig.suptitle(f"{subtitle}: B={r0['batch']}, I={r0['input']}, H={r0['hidden']}, {r0['dtype']}, "
                 f"{r0['device']}\n{describe(info)}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # room for the 2-line title
    path = os.path.join(out_dir, fname)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(out_dir: str, rows: list[dict], info: dict) -> list[str]:
    """Write both plots into ``out_dir``; returns their paths (none when nothing was timed)."""
    if not any(r["median_s"] is not None for r in rows):
        return []
    os.makedirs(out_dir, exist_ok=True)
    return [
        _figure(rows, info, lambda r: r["median_s"] * 1e3, "median time [ms]", "time_vs_T.png",
                out_dir, "time vs T"),
        _figure(rows, info, lambda r: r["per_step_us"], "time per step [us]",
                "time_per_step_vs_T.png", out_dir, "time per step vs T"),
    ]
