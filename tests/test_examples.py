"""Every example's --quick mode runs, prints its metric and writes its PNG (CI smoke tests)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "adding_problem": "adding_problem_quick.png",
    "char_lm": "char_lm_quick.png",
    "timeseries": "timeseries_quick.png",
    "seq2seq_dates": "seq2seq_dates_quick.png",
    "rl_tmaze": "rl_tmaze_quick.png",
}


def _run(name: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg")
    # the examples are CPU-only; the Triton interpreter switch of conftest is not theirs
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py"), "--quick", "--out", str(out),
         *extra],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_quick_mode(name, tmp_path):
    if name == "timeseries" and importlib.util.find_spec("statsmodels") is None:
        pytest.skip("timeseries needs the optional extra statsmodels (pip install statsmodels)")
    proc = _run(name, tmp_path)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    metric = [line for line in proc.stdout.splitlines() if line.startswith("metric: ")]
    assert metric and "=" in metric[0], proc.stdout[-2000:]
    png = tmp_path / EXAMPLES[name]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / EXAMPLES[name].replace(".png", ".json")).stat().st_size > 0
    if name == "rl_tmaze":  # the fused reset= agent and CleanRL's loop agent trained alike
        res = json.loads((tmp_path / "rl_tmaze_quick.json").read_text())
        assert res["largest_curve_difference"] == 0
        assert res["largest_weight_difference"] < 1e-9


def test_timeseries_without_statsmodels_says_how_to_install(tmp_path):
    # None in sys.modules makes `import statsmodels` raise ImportError, as if not installed
    code = ("import runpy, sys; sys.modules['statsmodels'] = None; "
            f"sys.argv = ['timeseries.py', '--quick', '--out', {str(tmp_path)!r}]; "
            f"sys.path.insert(0, {str(ROOT / 'examples')!r}); "
            f"runpy.run_path({str(ROOT / 'examples' / 'timeseries.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SKIPPED" in proc.stdout and "pip install statsmodels" in proc.stdout
    assert not list(tmp_path.glob("*.png"))
