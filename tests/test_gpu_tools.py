"""The GPU check's tools without a GPU: gpu_check.sh's no-CUDA mode (what CI runs), and the
parts of gpu_bench.py / gpu_summary.py / gpu_cases.py that need no device (tables, parsing,
case selection), so a GPU run does not die on a typo in its report code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import gpu_bench  # noqa: E402
import gpu_cases  # noqa: E402
import gpu_summary  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry mode is for machines without CUDA")
def test_gpu_check_without_cuda(tmp_path):
    out = tmp_path / "out"
    p = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "PYTHON": sys.executable})
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], p.stdout
    assert not out.exists()  # nothing written, nothing built


def test_gpu_check_needs_outdir():
    p = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh")], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0 and "usage" in p.stderr


def _row(backend, mode, ms, T=1024, ok=True, **kw):
    return dict(gpu_bench.ANCHOR, kind="anchor", T=T, backend=backend, mode=mode, ms=ms,
                us_per_step=1000 * ms / T, rel_err=0.0 if ok else 0.5, parity_ok=ok, **kw)


def test_bench_table_and_speedups(tmp_path):
    rows = [_row("torch.nn", "fwd", 2.0), _row("triton", "fwd", 1.0, path="per_step 16x48"),
            _row("triton+barrier", "fwd", 0.5, ok=False),
            dict(_row("cuda", "fwd", 0.0), error="RuntimeError: boom")]
    del rows[-1]["ms"]
    gpu_bench._speedups(rows)
    assert rows[1]["speedup_vs_cudnn"] == pytest.approx(2.0)
    assert "speedup_vs_cudnn" not in rows[2]  # parity failed: no speed-up reported
    assert "speedup_vs_cudnn" not in rows[3]
    gpu_bench.write(dict(rows=rows, skipped=[], wall_s=1.0), str(tmp_path))
    md = (tmp_path / "bench.md").read_text()
    assert "| triton | per_step 16x48 | 1.000 | 0.98 | 2.00× |" in md
    assert "FAIL 5.0e-01" in md and "RuntimeError: boom" in md
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][0]["ms"] == 2.0


def test_bench_rows_in_the_interpreter(monkeypatch, tmp_path):
    """gpu_bench.bench end to end on a tiny case: layers built and parity-checked against
    torch.nn, both modes timed (the timer faked: do_bench needs CUDA), speed-ups computed."""
    tri = pytest.importorskip("fusedrnn.ops.triton")
    if tri.unavailable() is not None or not tri.supports(torch.device("cpu")):
        pytest.skip("needs the Triton interpreter")
    import triton.testing

    calls = []
    monkeypatch.setattr(triton.testing, "do_bench",
                        lambda fn, **k: (fn(), calls.append(k["return_mode"]), 1.5)[-1])
    case = dict(cell="GRU", B=2, T=3, H=16, dtype="fp32", kind="sweep")
    res = gpu_bench.bench(str(tmp_path), 60.0, device="cpu", cases=[case])
    by = {(r["backend"], r["mode"]): r for r in res["rows"]}
    assert set(by) == {(b, m) for b in ("torch.nn", "triton") for m in ("fwd", "fwd+bwd")}, by
    for (b, m), r in by.items():
        assert "error" not in r and r["ms"] == 1.5 and r["parity_ok"], r
    assert by[("triton", "fwd")]["rel_err"] < 1e-5  # fp32 in the interpreter: exact products
    assert by[("triton", "fwd")]["speedup_vs_cudnn"] == pytest.approx(1.0)
    assert calls == ["median"] * 4


def test_summary_reads_what_the_script_writes(tmp_path):
    (tmp_path / "versions.json").write_text(json.dumps(dict(device="NVIDIA H200", capability="90",
                                                            sms=132, torch="2.11.0", triton="3.6.0")))
    (tmp_path / "status.tsv").write_text("versions\tpass\t3\tok\nbuild\tfail(rc=1)\t50\tlog\n")
    (tmp_path / "tests_triton.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_triton_interp" name="test_a"/>'
        '<testcase classname="tests.test_triton_interp" name="test_b"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_triton_interp" name="test_c"><skipped/></testcase>'
        '</testsuite></testsuites>')
    (tmp_path / "sanitizer_memcheck.log").write_text(
        "PASS triton-resident: resident\nFAIL triton-persistent: RuntimeError\n"
        "========= ERROR SUMMARY: 2 errors\n")
    assert gpu_summary.main([str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    t = s["tests"]["triton"]
    assert (t["passed"], t["failed"], t["skipped"]) == (1, 1, 1)
    assert t["failed_ids"] == ["tests.test_triton_interp::test_b"]
    assert s["sanitizer"]["memcheck"] == dict(
        cases={"triton-resident": "PASS", "triton-persistent": "FAIL"}, errors=2)
    md = (tmp_path / "summary.md").read_text()
    assert "NVIDIA H200" in md and "fail(rc=1)" in md and "FAILED tests.test_triton_interp::test_b" in md


def test_summary_from_a_cut_pytest_log(tmp_path):
    """A step whose box ended pytest leaves no junit: the -v log lines are counted instead."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "tests_triton.log").write_text(
        "[gw0] [ 10%] PASSED tests/test_triton_interp.py::test_a[x-y] \n"
        "[gw1] [ 20%] FAILED tests/test_triton_interp.py::test_b \n"
        "tests/test_scan_triton.py::test_c SKIPPED (no) [ 30%]\n"
        "tests/test_scan_triton.py::test_d PASSED [ 40%]\n")
    t = gpu_summary.collect(str(tmp_path))["tests"]["triton"]
    assert (t["passed"], t["failed"], t["skipped"], t["partial"]) == (2, 1, 1, True)
    assert t["failed_ids"] == ["tests/test_triton_interp.py::test_b"]


def test_cases_selection(capsys):
    assert gpu_cases.main(["--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert {"triton-resident", "triton-persistent", "triton-stream-solo", "triton-stream-split",
            "triton-proj-split", "triton-per-step"} <= set(listed)
    assert {f"cuda-{m}" for m in ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")} <= set(listed)
    assert gpu_cases.main(["no-such-case"]) == 2


@pytest.mark.parametrize("name", ["triton-resident", "triton-stream-solo"])
def test_cases_run_in_the_interpreter(monkeypatch, name):
    """The sanitizer workload's cases check their path and their numbers (the barrier cases can
    only run on a GPU: the interpreter runs programs one after another)."""
    tri = pytest.importorskip("fusedrnn.ops.triton")
    if tri.unavailable() is not None or not tri.supports(torch.device("cpu")):
        pytest.skip("needs the Triton interpreter")
    from fusedrnn.ops.triton import launch

    monkeypatch.setattr(launch, "sm_count", lambda device: 132)
    assert gpu_cases.run_triton(name, torch.device("cpu")).startswith(gpu_cases.TRITON[name][5])
