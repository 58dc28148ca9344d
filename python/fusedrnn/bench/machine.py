"""The machine a benchmark ran on, written into every output (table, JSON, CSV, plots)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _git_commit() -> str | None:
    """The checkout's commit (with ``-dirty`` when files differ), or None outside a git tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """Everything that decides how fast a case runs and that we can read cheaply.

    Returns:
        dict with ``cpu``, ``cores`` (logical CPUs this process may use), ``torch_threads``,
        ``torch``, ``triton``, ``gpu`` (names, or None), ``python``, ``platform``, ``fusedrnn``,
        ``backends`` (fusedrnn.available_backends()), ``git``, ``loadavg`` and ``utc``.
    """
    import fusedrnn

    gpus = None
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton_version(),
        "gpu": gpus,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fusedrnn": fusedrnn.__version__,
        "backends": fusedrnn.available_backends(),
        "git": _git_commit(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": sys.argv[1:],
    }


def describe(info: dict) -> str:
    """One line naming the machine, for table headers and plot titles."""
    gpu = ", ".join(info["gpu"]) if info.get("gpu") else "no GPU"
    tri = info["triton"] or "not installed"
    return (f"{info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), {gpu}; "
            f"torch {info['torch']}, triton {tri}; {info['utc']}")
