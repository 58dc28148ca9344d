"""The sweep: every (cell, sequence length, mode) against torch.nn and every backend.

For each case the order is: parity run (compared with the float64 anchor; a failing backend is
reported as ``PARITY FAIL`` and never timed) -> one call under the memory profiler -> warm-up ->
timing. Rows are plain dicts (see :data:`ROW_FIELDS`) so they go straight into JSON and CSV.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field

import torch

from . import cases, timing
from .cases import PARALLEL

ROW_FIELDS = (
    "cell", "mode", "backend", "seq_len", "batch", "input", "hidden", "dtype", "device", "status",
    "median_s", "iqr_s", "calls", "per_step_us", "tokens_per_s", "speedup_vs_torch",
    "peak_mem_bytes", "parity_err", "parity_bound", "note",
)


@dataclass
class Config:
    """One sweep's settings (the CLI fills it; see ``fusedrnn-bench --help``)."""

    cells: list[str]
    modes: list[str]
    seq_lens: list[int]
    batch: int = 32
    hidden: int = 64
    input: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    backends: list[str] | None = None  # None: the device's usual backends
    repeats: int = 10  # target timed calls per case
    min_repeats: int = 3  # never fewer, even when a call is slow
    max_case_time: float = 1.0  # seconds of timing per case when repeats do not fit
    warmup_s: float = 0.05
    reference_max_t: int = 4096  # the reference backend is a Python loop: skip it beyond this
    memory: bool = True
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def asdict(self) -> dict:
        d = asdict(self)
        d.pop("notes")
        return d


def plan(cfg: Config) -> tuple[dict[str, list[str]], list[str]]:
    """The backends per cell, and notes on what is left out and why."""
    device = torch.device(cfg.device)
    per_cell, notes = {}, []
    for cell in cfg.cells:
        per_cell[cell], why = cases.backends_for(cell, device, cfg.backends)
        notes += why
    if cfg.backends is None and device.type == "cpu":
        notes.append("triton/cuda are not swept on CPU (interpreter / host emulation); "
                     "name them in --backends to time them anyway")
    if "reference" in sum(per_cell.values(), []) and any(t > cfg.reference_max_t for t in cfg.seq_lens):
        notes.append(f"reference backend (a Python time loop) timed up to T={cfg.reference_max_t} "
                     "only (--reference-max-t); beyond it, MinGRU/MinLSTM are checked against "
                     "the compiled scan in float64")
    return per_cell, notes


class _Sweep:
    def __init__(self, cfg: Config, progress):
        self.cfg, self.progress = cfg, progress
        self.device, self.dtype = torch.device(cfg.device), cfg.torch_dtype
        self.rows: list[dict] = []
        self.baseline_cache: dict[tuple, dict] = {}  # (torch layer, T, mode) -> row

    def row(self, cell, mode, backend, T, **kw) -> dict:
        c = self.cfg
        r = dict.fromkeys(ROW_FIELDS)
        r.update(cell=cell, mode=mode, backend=backend, seq_len=T, batch=c.batch, input=c.input,
                 hidden=c.hidden, dtype=c.dtype, device=c.device, note="")
        r.update(kw)
        return r

    def prepare(self, row: dict, call, est: float, pending: list) -> dict:
        """Peak memory and warm-up of a call that has already run once (the parity run); the
        call joins ``pending``, the group timed together once all its rows are prepared."""
        c = self.cfg
        if c.memory:
            row["peak_mem_bytes"] = timing.peak_memory(call, self.device)
        if est < c.warmup_s:
            est = timing.warm_up(call, self.device, c.warmup_s, est)
        budget = timing.run_time_budget(est, c.repeats, c.min_repeats, c.max_case_time)
        pending.append((row, (call, est, budget)))
        return row

    def time_pending(self, pending: list) -> None:
        """Time a group's prepared rows in turns and fill in their timing columns."""
        results = timing.measure_interleaved([p for _, p in pending], self.device)
        for (row, _), m in zip(pending, results):
            T, B, med = row["seq_len"], row["batch"], m["median_s"]
            row.update(median_s=med, iqr_s=m["iqr_s"], calls=m["calls"],
                       per_step_us=med / T * 1e6, tokens_per_s=T * B / med)

    def run_model(self, model, mode, sets):
        """The parity run (results on set 0, and its wall time) and the timed call."""
        call, run = cases.make_call(model, mode, sets)
        t0 = time.perf_counter()
        outs = run(0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return call, outs, time.perf_counter() - t0

    def baseline(self, cell, T, mode, sets, anchor, pending) -> tuple[dict, float | None]:
        """The torch.nn row (timed once per torch layer, T and mode, and reused by the min
        cells) and its error against the anchor."""
        layer = PARALLEL.get(cell, cell)
        key = (layer, T, mode)
        cached = self.baseline_cache.get(key)
        if cached is None or (cell not in PARALLEL and cached["parity_err"] is None):
            c = self.cfg
            model = cases.make_model(layer, None, c.input, c.hidden, self.base_weights[layer],
                                     self.dtype, self.device)
            call, outs, est = self.run_model(model, mode, sets)
            # a min cell's anchor is another model: torch.nn's error is known once its own
            # cell is swept (then only the parity run is repeated, not the timing)
            err = cases.rel_error(outs, anchor[mode]) if cell not in PARALLEL else None
            del outs
            if cached is None:
                cached = self.prepare(self.row(layer, mode, cases.baseline_label(cell), T,
                                               status="baseline"), call, est, pending)
            cached["parity_err"] = err
            self.baseline_cache[key] = cached
        return cached, cached["parity_err"]

    def backend_row(self, cell, T, mode, backend, sets, anchor, bound, pending) -> dict:
        c = self.cfg
        if backend == "reference" and T > c.reference_max_t:
            return self.row(cell, mode, backend, T, status="skipped",
                            note=f"T > --reference-max-t {c.reference_max_t}")
        model = cases.make_model(cell, backend, c.input, c.hidden, self.weights, self.dtype,
                                 self.device)
        call, outs, est = self.run_model(model, mode, sets)
        err = cases.rel_error(outs, anchor[mode])
        del outs
        if not err <= bound:
            return self.row(cell, mode, backend, T, status="PARITY FAIL", parity_err=err,
                            parity_bound=bound, note="not timed: output differs from float64 anchor")
        note = "" if self.anchor_name.startswith(("torch.nn", f"{cell} reference")) else \
            f"parity vs {self.anchor_name}"
        row = self.row(cell, mode, backend, T, status="ok", parity_err=err, parity_bound=bound,
                       note=note)
        return self.prepare(row, call, est, pending)

    def min_cell_base_err(self, cell, mode, sets, anchor) -> float:
        """The reference scan's own error in the sweep dtype (the min cells' parity baseline)."""
        c = self.cfg
        model = cases.make_model(cell, "reference", c.input, c.hidden, self.weights, self.dtype,
                                 self.device)
        return cases.rel_error(cases.make_call(model, mode, sets)[1](0), anchor[mode])

    def run(self, per_cell: dict[str, list[str]]) -> list[dict]:
        c = self.cfg
        self.base_weights = {}
        for cell, backends in per_cell.items():
            layer = PARALLEL.get(cell, cell)
            if layer not in self.base_weights:
                self.base_weights[layer] = cases.make_weights(layer, c.input, c.hidden, c.seed)
            self.weights = cases.make_weights(cell, c.input, c.hidden, c.seed)
            for T in c.seq_lens:
                self._T = T
                sets = cases.input_sets(T, c.batch, c.input, c.hidden, self.dtype, self.device,
                                        c.seed)
                model64, self.anchor_name = cases.anchor_model(
                    cell, c.input, c.hidden, self.weights, self.device, T, c.reference_max_t)
                anchor = cases.anchor_outputs(model64, sets, c.modes)
                for mode in c.modes:
                    self.group(cell, T, mode, backends, sets, anchor)
        return self.rows

    def group(self, cell, T, mode, backends, sets, anchor) -> None:
        """All rows of one (cell, T, mode): parity and preparation of each, then the timing of
        the prepared ones in turns."""
        c, pending = self.cfg, []
        self.progress.set_description(f"{cell} T={T} {mode} torch.nn")
        base, base_err = self._guard(cell, T, mode, cases.baseline_label(cell),
                                     lambda: self.baseline(cell, T, mode, sets, anchor, pending))
        self.progress.update(1)
        if cell in PARALLEL:  # the reference in the sweep dtype, where affordable
            base_err = (self.min_cell_base_err(cell, mode, sets, anchor)
                        if T <= c.reference_max_t else 0.0)
        bound = cases.parity_bound(self.dtype, base_err or 0.0)
        rows = []
        for b in backends:
            self.progress.set_description(f"{cell} T={T} {mode} {b}")
            r, _ = self._guard(cell, T, mode, b, lambda: (
                self.backend_row(cell, T, mode, b, sets, anchor, bound, pending), None))
            rows.append(r)
            self.progress.update(1)
        self.progress.set_description(f"{cell} T={T} {mode} timing")
        try:
            self.time_pending(pending)
        except Exception:  # noqa: BLE001  (reported as ERROR rows, as in _guard)
            msg = traceback.format_exc(limit=-3)
            self.cfg.notes.append(f"{cell} T={T} {mode} timing: {msg}")
            for r, _ in pending:
                r.update(status="ERROR", note=msg.strip().splitlines()[-1][:300])
        self.rows += [dict(base, cell=cell), *rows]

    def _guard(self, cell, T, mode, backend, fn):
        """Run one row; an exception becomes an ERROR row (with the message) instead of a crash."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001  (any failure of one case is reported, not fatal)
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            self.cfg.notes.append(f"{cell} T={T} {mode} {backend}: {msg}\n"
                                  + traceback.format_exc(limit=-3))
            return self.row(cell, mode, backend, T, status="ERROR", note=msg), None


def add_speedups(rows: list[dict]) -> None:
    """speedup_vs_torch = torch.nn's median / the row's median, per (cell, T, mode)."""
    base = {(r["cell"], r["seq_len"], r["mode"]): r["median_s"]
            for r in rows if r["status"] == "baseline"}
    for r in rows:
        b = base.get((r["cell"], r["seq_len"], r["mode"]))
        if r["median_s"] and b:
            r["speedup_vs_torch"] = b / r["median_s"]


def run_sweep(cfg: Config, progress_bar: bool = True) -> list[dict]:
    """Run the whole sweep; returns its rows (with speedups). Notes go to ``cfg.notes``."""
    from tqdm.auto import tqdm

    per_cell, notes = plan(cfg)
    cfg.notes += notes
    total = sum((1 + len(b)) * len(cfg.seq_lens) * len(cfg.modes) for b in per_cell.values())
    with tqdm(total=total, disable=not progress_bar, unit="case", dynamic_ncols=True) as bar:
        rows = _Sweep(cfg, bar).run(per_cell)
    add_speedups(rows)
    return rows
