"""Smoke test of the benchmark CLI (the sweep itself is not a test: see docs/benchmarks.md).

One tiny run of ``python -m fusedrnn.bench`` checks that every output is written with the fields
the docs promise, and one in-process check that a backend whose numbers are wrong is reported
as PARITY FAIL and never timed.
"""

import csv
import json
import subprocess
import sys

import torch

import fusedrnn
from fusedrnn.bench import cases, sweep

MACHINE_FIELDS = {"cpu", "cores", "torch_threads", "torch", "triton", "gpu", "utc", "backends"}


def test_cli_quick_writes_outputs(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "fusedrnn.bench", "--quick", "--cells", "GRU", "LSTM",
           "--seq-lens", "4", "8", "--batch", "2", "--hidden", "8", "--max-case-time", "0.01",
           "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "vs torch.nn" in proc.stdout and "machine:" in proc.stdout

    doc = json.loads((out / "results.json").read_text())
    assert doc["schema"] == "fusedrnn-bench/1"
    assert MACHINE_FIELDS <= set(doc["machine"])
    assert {"timing_method", "memory_method", "parity_rule", "command", "wall_time_s"} <= set(doc)
    rows = doc["results"]
    backends = [b for b in ("reference", "cpu") if b in fusedrnn.available_backends()]
    # every (cell, T, mode) has the torch.nn baseline plus one row per CPU backend
    assert len(rows) == 2 * 2 * 2 * (1 + len(backends))
    for r in rows:
        assert set(r) == set(sweep.ROW_FIELDS)
        assert r["status"] in ("baseline", "ok"), r
        assert r["median_s"] > 0 and r["calls"] >= 1 and r["peak_mem_bytes"] >= 0
        assert abs(r["tokens_per_s"] - r["seq_len"] * r["batch"] / r["median_s"]) < 1e-6 * r["tokens_per_s"]
        if r["status"] == "ok":
            assert r["parity_err"] <= r["parity_bound"] <= 1e-5
        else:
            assert r["backend"] in ("torch.nn.GRU", "torch.nn.LSTM") and r["speedup_vs_torch"] == 1.0
    assert {r["backend"] for r in rows} == {"torch.nn.GRU", "torch.nn.LSTM", *backends}

    with open(out / "results.csv") as f:
        lines = [ln for ln in f if not ln.startswith("#")]
    table = list(csv.DictReader(lines))
    assert len(table) == len(rows) and tuple(table[0]) == sweep.ROW_FIELDS
    for name in ("time_vs_T.png", "time_per_step_vs_T.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Speedup vs torch.nn" in (out / "results.md").read_text()


def test_wrong_backend_is_parity_fail_and_not_timed(monkeypatch):
    real = cases.make_model

    def perturbed(cell, backend, *args):
        m = real(cell, backend, *args)
        if backend == "reference":  # a "backend" that computes with slightly wrong weights
            with torch.no_grad():
                m.weight_hh_l0.mul_(1 + 1e-4)
        return m

    monkeypatch.setattr(cases, "make_model", perturbed)
    cfg = sweep.Config(cells=["GRU"], modes=["fwd"], seq_lens=[8], batch=2, hidden=8, input=8,
                       backends=["reference"], max_case_time=0.01, memory=False)
    rows = sweep.run_sweep(cfg, progress_bar=False)
    ref = [r for r in rows if r["backend"] == "reference"]
    assert len(ref) == 1 and ref[0]["status"] == "PARITY FAIL"
    assert ref[0]["median_s"] is None and ref[0]["speedup_vs_torch"] is None
    assert ref[0]["parity_err"] > ref[0]["parity_bound"]
