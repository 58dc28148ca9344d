"""The default that cannot hang: which Triton path runs on a CUDA device whose (device, torch,
triton) combination has not been validated, the opt-in, and the bounded grid-barrier spin.

No GPU is needed: the device is faked (capability, name, SM count, shared memory) for the plan,
and the bounded spin runs in the interpreter, which executes programs one after another -- so a
grid barrier there can never be passed and must end in the timeout error.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TOL
from fusedrnn import backends
from fusedrnn.ops.reference import recurrence_ref
from triton_env import DEV, tri  # skips the module without a Triton device
from fusedrnn.ops.triton import launch, validated  # noqa: E402

CUDA = torch.device("cuda")
BF = torch.bfloat16


@pytest.fixture
def fake_h200(monkeypatch):
    """launch.layer_plan sees an H200 (sm_90, 132 SMs) with this process's torch and triton."""
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    monkeypatch.setattr(launch, "sm_count", lambda device: 132)
    monkeypatch.setattr(launch, "smem_limit", lambda device: 232448)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.delenv(validated.ENV, raising=False)
    validated.allow_grid_barrier(None)
    yield validated.Combo((9, 0), "H200", *validated._versions())
    validated.allow_grid_barrier(None)


#: layers whose H100/H200 plan is a grid-barrier path (docs/triton_backend.md's table)
BARRIER_LAYERS = [("LSTM", 128, 128, False), ("GRU", 128, 128, False),  # on-chip split
                  ("LSTM", 768, 768, False), ("RNN_TANH", 256, 256, False),  # streamed split
                  ("LSTM", 256, 128, True)]  # projected streamed split: two barriers per step
IDS = ["LSTM128-chip", "GRU128-chip", "LSTM768-stream", "RNN256-stream", "LSTM256-proj"]


def _plan(case):
    mode, H, P, proj = case
    return launch.layer_plan(mode, H, P, 16, BF, proj, CUDA)


@pytest.mark.parametrize("case", BARRIER_LAYERS, ids=IDS)
def test_auto_unvalidated_no_grid_barrier(fake_h200, case):
    """An empty table: auto picks the Triton backend on CUDA, and its plan has no grid barrier
    (the same tiling runs per step); the direct plan with the barrier allowed would have one."""
    assert validated.VALIDATED == ()
    assert backends.RECURRENCE._resolve("auto", CUDA) is tri
    pl = _plan(case)
    assert not launch.uses_grid_barrier(pl), pl
    assert pl.path == "per_step"
    mode, H, P, proj = case
    full = launch.plan(mode, H, P, 16, BF, proj, 132, 232448)
    assert launch.uses_grid_barrier(full), full
    assert (full.BU, full.n_tiles, full.stream) == (pl.BU, pl.n_tiles, pl.stream)


def test_safe_paths_unchanged(fake_h200):
    """Paths without a grid barrier (resident; streamed solo with its CTA barrier) are kept."""
    assert _plan(("LSTM", 64, 64, False)).path == "resident"
    solo = launch.layer_plan("GRU", 64, 64, 16, torch.float32, False, CUDA)
    assert (solo.path, solo.n_tiles) == ("stream", 1)


@pytest.mark.parametrize("case", BARRIER_LAYERS, ids=IDS)
def test_validated_combo_enables_barrier(fake_h200, monkeypatch, case):
    monkeypatch.setattr(validated, "VALIDATED", (fake_h200,))
    assert launch.uses_grid_barrier(_plan(case))


@pytest.mark.parametrize("combo", [
    dict(capability=(8, 0)), dict(name="H100"), dict(torch="2.0"), dict(triton="3.0")],
    ids=["other-capability", "other-name", "other-torch", "other-triton"])
def test_other_combo_does_not(fake_h200, monkeypatch, combo):
    monkeypatch.setattr(validated, "VALIDATED", (fake_h200._replace(**combo),))
    assert not launch.uses_grid_barrier(_plan(BARRIER_LAYERS[0]))


def test_version_prefix_matching():
    c = validated.Combo((9, 0), "H200", "2.11", "3.6")
    assert validated._matches(c, (9, 0), "NVIDIA H200", "2.11.0+cu130", "3.6.0")
    assert not validated._matches(c, (9, 0), "NVIDIA H200", "2.1.0", "3.6.0")
    assert not validated._matches(c, (9, 0), "NVIDIA H200", "2.11.0", "3.60.1")


def test_opt_in_and_opt_out(fake_h200, monkeypatch):
    case = BARRIER_LAYERS[0]
    monkeypatch.setenv(validated.ENV, "1")
    assert launch.uses_grid_barrier(_plan(case))
    monkeypatch.setattr(validated, "VALIDATED", (fake_h200,))
    monkeypatch.setenv(validated.ENV, "0")  # off even on a validated combination
    assert not launch.uses_grid_barrier(_plan(case))
    validated.allow_grid_barrier(True)  # the Python switch beats the environment
    assert launch.uses_grid_barrier(_plan(case))
    monkeypatch.setenv(validated.ENV, "yes")
    validated.allow_grid_barrier(None)
    with pytest.raises(ValueError, match="must be 0 or 1"):
        _plan(case)
    with pytest.raises(TypeError):
        validated.allow_grid_barrier(1)


@pytest.mark.skipif(DEV.type != "cpu", reason="the interpreter has no SM count")
def test_no_barrier_without_sms():
    """Opt-in or not, a device without an SM count (the interpreter) never gets the barrier."""
    validated.allow_grid_barrier(True)
    try:
        pl = launch.layer_plan("LSTM", 128, 128, 16, BF, False, DEV, tile_units=16)
    finally:
        validated.allow_grid_barrier(None)
    assert pl.path == "per_step", pl


@pytest.mark.skipif(DEV.type != "cpu", reason="the interpreter runs programs one by one")
@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_bounded_spin_raises(monkeypatch, mode):
    """A persistent split launch whose programs cannot all be resident -- the interpreter runs
    them one after another -- ends in the timeout error instead of hanging, forward and
    backward; the same layer per step matches the reference."""
    monkeypatch.setattr(launch, "sm_count", lambda device: 132)
    monkeypatch.setattr(launch, "BARRIER_SPIN_MAX", 3)
    g = torch.Generator().manual_seed(0)
    T, B, H = 3, 2, 37
    G = 4 if mode == "LSTM" else 3
    xw, w = torch.randn(T, B, G * H, generator=g), torch.randn(G * H, H, generator=g) * 0.2
    h0 = torch.randn(B, H, generator=g)
    validated.allow_grid_barrier(True)
    try:
        pl = launch.layer_plan(mode, H, H, B, torch.float32, False, DEV, tile_units=16)
        assert launch.uses_grid_barrier(pl) and pl.n_tiles == 3, pl
        with pytest.raises(RuntimeError, match="forward kernel's grid barrier timed out"):
            launch.rnn_fwd(mode, xw, w, None, h0, tile_units=16)
    finally:
        validated.allow_grid_barrier(None)
    y, h, _, saved = launch.rnn_fwd(mode, xw, w, None, h0, tile_units=16)
    assert saved["plan"].path == "per_step"
    yr, hr, _ = recurrence_ref(mode, xw.double(), w.double(), None, h0.double())
    torch.testing.assert_close(y.double(), yr, **TOL[torch.float32])
    torch.testing.assert_close(h.double(), hr, **TOL[torch.float32])
    # the backward of a barrier plan times out the same way
    barrier_plan = launch.plan(mode, H, H, B, torch.float32, False, 132, None, 16)
    dy = torch.randn(T, B, H, generator=g)
    with pytest.raises(RuntimeError, match="backward kernel's grid barrier timed out"):
        launch.rnn_bwd(mode, dict(saved, plan=barrier_plan), w, dy, torch.zeros(B, H),
                       torch.zeros(B, H) if mode == "LSTM" else None)
