"""Where the Triton backend may use its grid barrier: the hardware/version combinations on which
``tools/gpu_check.sh`` has passed, and the explicit opt-in.

The persistent split paths (``launch.plan``'s "persistent" and multi-program "stream") run all
T steps in one launch and spin at a grid barrier every step, which needs every program of the
grid resident at once. Nothing of it has run on a GPU yet, and MPS limits, green contexts or a
long-running kernel on another stream (NCCL) can break co-residency, so by default these layers
run the same kernels per step (``per_step``: the kernel boundary is the barrier; cannot hang,
T launches instead of 1). The default widens as combinations are validated:

* ``VALIDATED`` below: one entry per (device, torch, triton) on which ``tools/gpu_check.sh``
  passed every GPU test with the grid barrier enabled. Add an entry only from a real run, with
  the run's OUTDIR/summary.json named in the comment.
* ``FUSEDRNN_TRITON_GRID_BARRIER=1`` enables the barrier paths on any device (``=0`` disables
  them everywhere, also on a validated one); ``allow_grid_barrier(True / False / None)`` does the
  same from Python (None: back to the table and the environment). ``tools/gpu_check.sh`` sets
  the variable so its tests exercise the barrier, under a time limit.

Even when enabled, the barrier's spin is bounded (``launch.BARRIER_SPIN_MAX``): a grid that is
not co-resident raises a RuntimeError instead of hanging.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch


class Combo(NamedTuple):
    """One validated combination. ``capability`` is (major, minor); ``name`` a substring of
    ``torch.cuda.get_device_name`` ("H200"); ``torch`` / ``triton`` version prefixes ("2.11",
    "3.6"): a release validates its patch releases."""

    capability: tuple[int, int]
    name: str
    torch: str
    triton: str


#: Combinations on which tools/gpu_check.sh passed with the grid barrier enabled. Empty: no GPU
#: run yet (see README.md, "GPU").
VALIDATED: tuple[Combo, ...] = ()

ENV = "FUSEDRNN_TRITON_GRID_BARRIER"
_override: bool | None = None


def allow_grid_barrier(enabled: bool | None) -> None:
    """Enable (True) or disable (False) the grid-barrier paths in this process, overriding the
    table and ``FUSEDRNN_TRITON_GRID_BARRIER``; None restores the default."""
    global _override
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"allow_grid_barrier: expected True, False or None, got {enabled!r}")
    _override = enabled


def _versions() -> tuple[str, str]:
    import triton

    return torch.__version__, triton.__version__


def _matches(entry: Combo, cap, name: str, torch_v: str, triton_v: str) -> bool:
    def same_release(v: str, prefix: str) -> bool:
        return v == prefix or v.startswith(prefix + ".") or v.startswith(prefix + "+")

    return (tuple(cap) == tuple(entry.capability) and entry.name in name
            and same_release(torch_v, entry.torch) and same_release(triton_v, entry.triton))


def is_validated(device: torch.device, table: tuple[Combo, ...] | None = None) -> bool:
    """Whether this CUDA device with this torch and triton is in ``table`` (default VALIDATED)."""
    table = VALIDATED if table is None else table
    if torch.device(device).type != "cuda" or not table:
        return False
    cap = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    torch_v, triton_v = _versions()
    return any(_matches(e, cap, name, torch_v, triton_v) for e in table)


def grid_barrier_allowed(device: torch.device) -> bool:
    """Whether ``launch.plan`` may choose a path with a grid barrier on ``device``: the Python
    override, else the environment variable, else the validation table."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV, "").strip()
    if env:
        if env not in ("0", "1"):
            raise ValueError(f"{ENV} must be 0 or 1, got {env!r}")
        return env == "1"
    return is_validated(device)
