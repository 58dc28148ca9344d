"""Choosing a backend for the recurrence op: "auto" | "reference" | "cpu" | "triton" | "cuda".

A backend is a module under ``fusedrnn.ops`` that provides

    unavailable() -> str | None
        None when the backend can run in this process, else why not and how to fix it.
    supports(device: torch.device) -> bool
        whether it runs on tensors of that device.
    recurrence(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr) -> (y, h_T, c_T)
        the op contract of ``fusedrnn.ops.reference`` with autograd.

"auto" picks cpu for CPU tensors and the fastest GPU backend for CUDA tensors; when the compiled
part it wants is missing it falls back to the reference with a one-time warning.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from types import ModuleType

import torch

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")
_MODULES = {
    "reference": "fusedrnn.ops.reference_backend",
    "cpu": "fusedrnn.ops.cpu",
    "triton": "fusedrnn.ops.triton",
    "cuda": "fusedrnn.ops.cuda",
}
#: preference order of "auto" per device type
_AUTO = {"cpu": ("cpu",), "cuda": ("triton", "cuda")}
_warned: set[tuple[str, str]] = set()


def _load(name: str) -> tuple[ModuleType | None, str | None]:
    try:
        mod = importlib.import_module(_MODULES[name])
        return mod, mod.unavailable()
    except Exception as e:  # the backend's Python side is missing or broken: say why, go on
        return None, f"backend {name!r} could not be loaded: {type(e).__name__}: {e}"


def check_backend(name) -> str:
    """Validate a backend name at construction; raise if it can never run in this process."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name != "auto":
        _, why = _load(name)
        if why is not None:
            raise RuntimeError(f"backend {name!r} is not available: {why}")
    return name


def available_backends() -> list[str]:
    """Names of the backends that can run in this process (any device)."""
    return [n for n in _MODULES if _load(n)[1] is None]


_resolved: dict[tuple[str, str], ModuleType] = {}


def resolve(name: str, device: torch.device) -> ModuleType:
    """The backend module that runs tensors on ``device`` for the requested ``name``."""
    key = (name, device.type)
    mod = _resolved.get(key)
    if mod is None:  # resolved once per (name, device type): this sits on every forward
        mod = _resolved[key] = _resolve(name, device)
    return mod


def _resolve(name: str, device: torch.device) -> ModuleType:
    if name == "auto":
        for cand in _AUTO.get(device.type, ()):
            mod, why = _load(cand)
            if why is None and mod.supports(device):
                return mod
            key = (cand, device.type)
            if key not in _warned:
                _warned.add(key)
                warnings.warn(
                    f"fusedrnn: backend {cand!r} is not available ({why or 'unsupported device'}); "
                    f"falling back to the reference backend on {device.type}",
                    stacklevel=3,
                )
        name = "reference"
    mod, why = _load(name)
    if why is not None:
        raise RuntimeError(f"backend {name!r} is not available: {why}")
    if not mod.supports(device):
        raise RuntimeError(f"backend {name!r} does not run on {device.type} tensors")
    return mod


def recurrence(mode, xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None,
               backend: str = "auto", recurrent_grad_clip: float | None = None):
    """Run the op contract of ``fusedrnn.ops.reference`` on the chosen backend.

    ``recurrent_grad_clip`` clamps the gradient carried back through the recurrence at every
    step (see ``recurrence_ref``); None (the default) leaves every backend's results untouched.
    """
    mod = resolve(backend, xw.device)
    if recurrent_grad_clip is None:
        return mod.recurrence(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr)
    if "recurrent_grad_clip" not in inspect.signature(mod.recurrence).parameters:
        raise NotImplementedError(
            f"backend {mod.__name__.rsplit('.', 1)[-1]!r} does not implement recurrent_grad_clip; "
            "use backend='reference' (or another backend that does) for clipped BPTT"
        )
    return mod.recurrence(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr,
                          recurrent_grad_clip=recurrent_grad_clip)
