"""Choosing a backend for the recurrence op: "auto" | "reference" | "cpu" | "triton" | "cuda".

A backend is a module under ``fusedrnn.ops`` that provides

    unavailable() -> str | None
        None when the backend can run in this process, else why not and how to fix it.
    supports(device: torch.device) -> bool
        whether it runs on tensors of that device.
    recurrence(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, recurrent_grad_clip=None)
        -> (y, h_T, c_T): the op contract of ``fusedrnn.ops.reference`` with autograd (every
        backend implements ``recurrent_grad_clip``).
    A cell with ``cell_params`` (ops/cells.py ``Cell.cell_params``: the LayerNorm cells) runs on
    the backends whose ``recurrence`` takes the keyword ``cell_params``.

"auto" picks cpu for CPU tensors and the fastest GPU backend for CUDA tensors; when the compiled
part it wants is missing it falls back to the reference with a one-time warning.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings
from types import ModuleType

import torch

from .ops.cells import CELLS


class Registry:
    """Backends of one op: loading (once), validation, and the choice for a device.

    Args:
        label: how messages name a backend ("backend", "scan backend").
        modules: backend name -> module path.
        auto: device type -> backend names "auto" tries in order before the reference.
    """

    def __init__(self, label: str, modules: dict[str, str], auto: dict[str, tuple[str, ...]]):
        self.label, self.modules, self.auto = label, modules, auto
        self.names = ("auto", *modules)
        # filled once: later calls are dict lookups, which torch.compile can trace
        self._loaded: dict[str, tuple[ModuleType | None, str | None]] = {}
        self._resolved: dict[tuple[str, str], ModuleType] = {}
        self._warned: set[tuple[str, str]] = set()

    def load(self, name: str) -> tuple[ModuleType | None, str | None]:
        """(module, None) when the backend can run in this process, else (module?, why not)."""
        if name not in self._loaded:
            try:
                mod = importlib.import_module(self.modules[name])
                self._loaded[name] = (mod, mod.unavailable())
            except Exception as e:  # its Python side is missing or broken: say why, go on
                self._loaded[name] = (None, f"{self.label} {name!r} could not be loaded: "
                                            f"{type(e).__name__}: {e}")
        return self._loaded[name]

    def available(self) -> list[str]:
        """Names of the backends that can run in this process (any device)."""
        return [n for n in self.modules if self.load(n)[1] is None]

    def check(self, name) -> str:
        """Validate a backend name at construction; raise if it can never run here."""
        if not isinstance(name, str) or name not in self.names:
            raise ValueError(f"backend must be one of {self.names}, got {name!r}")
        if name != "auto":
            _, why = self.load(name)
            if why is not None:
                raise RuntimeError(f"{self.label} {name!r} is not available: {why}")
        return name

    def resolve(self, name: str, device: torch.device) -> ModuleType:
        """The backend module that runs tensors on ``device`` for the requested ``name``."""
        key = (name, device.type)
        mod = self._resolved.get(key)
        if mod is None:  # resolved once per (name, device type): this sits on every forward
            mod = self._resolved[key] = self._resolve(name, device)
        return mod

    def _resolve(self, name: str, device: torch.device) -> ModuleType:
        self.check(name)
        if name == "auto":
            for cand in self.auto.get(device.type, ()):
                mod, why = self.load(cand)
                if why is None and mod.supports(device):
                    return mod
                if (cand, device.type) not in self._warned:
                    self._warned.add((cand, device.type))
                    warnings.warn(
                        f"fusedrnn: {self.label} {cand!r} is not available "
                        f"({why or 'unsupported device'}); falling back to the reference "
                        f"{self.label} on {device.type}",
                        stacklevel=4,
                    )
            name = "reference"
        mod, why = self.load(name)
        if why is not None:
            raise RuntimeError(f"{self.label} {name!r} is not available: {why}")
        if not mod.supports(device):
            raise RuntimeError(f"{self.label} {name!r} does not run on {device.type} tensors")
        return mod


#: the recurrence op's backends; "auto" prefers cpu on CPU, then triton and cuda on CUDA
RECURRENCE = Registry(
    "backend",
    {"reference": "fusedrnn.ops.reference_backend", "cpu": "fusedrnn.ops.cpu",
     "triton": "fusedrnn.ops.triton", "cuda": "fusedrnn.ops.cuda"},
    {"cpu": ("cpu",), "cuda": ("triton", "cuda")},
)
BACKENDS = RECURRENCE.names
check_backend = RECURRENCE.check
available_backends = RECURRENCE.available
resolve = RECURRENCE.resolve


@functools.lru_cache(maxsize=None)
def _takes(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _accepts(mod: ModuleType, name: str) -> bool:
    """Whether the backend's ``recurrence`` takes the keyword ``name`` (read once per backend)."""
    return _takes(mod.recurrence, name)


def _fused_by(name: str) -> list[str]:
    """The backends whose ``recurrence`` takes the keyword ``name`` (loaded or not)."""
    out = []
    for b in RECURRENCE.modules:
        mod, _ = RECURRENCE.load(b)
        if mod is not None and _accepts(mod, name):
            out.append(b)
    return out


def _warn_once(key, message: str) -> None:
    """One warning per key per process (the fallbacks of ``recurrence``); stacklevel points at
    the caller of ``recurrence``."""
    if key not in RECURRENCE._warned:
        RECURRENCE._warned.add(key)
        warnings.warn(message, stacklevel=4)


def _next_runner(after: str, mode, xw, w_hh, h0, w_hr, kw) -> tuple[ModuleType, str]:
    """The first of "auto"'s backends for xw's device after ``after`` that loads, runs on the
    device, takes every keyword of ``kw`` and does not call the layer unsupported; else the
    reference: (module, name)."""
    cands = RECURRENCE.auto.get(xw.device.type, ())
    rest = cands[cands.index(after) + 1:] if after in cands else ()
    for name in rest:
        mod, why = RECURRENCE.load(name)
        if why is not None or not mod.supports(xw.device):
            continue
        if not all(_accepts(mod, k) for k in kw):
            continue
        if hasattr(mod, "unsupported") and mod.unsupported(mode, xw, w_hh, h0, w_hr) is not None:
            continue
        return mod, name
    return RECURRENCE.load("reference")[0], "reference"


def recurrence(mode, xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None,
               backend: str = "auto", recurrent_grad_clip: float | None = None, *,
               reset=None, zoneout=None, cell_params=None):
    """Run the op contract of ``fusedrnn.ops.reference`` on the chosen backend.

    ``recurrent_grad_clip`` clamps the gradient carried back through the recurrence at every
    step (see ``recurrence_ref``); None (the default) leaves every backend's results untouched.
    ``reset`` [T, B] and ``zoneout`` [T, B, Z] (see the reference's module doc): a backend that
    does not fuse one raises NotImplementedError naming the ones that do; with backend="auto"
    the call falls back to the reference backend with a one-time warning instead.
    ``cell_params``: the extra per-layer parameters of the cells that have some (the LayerNorm
    cells); a backend that does not run those cells is refused or, with "auto", falls back to
    the reference the same way, naming the cell.
    """
    mod = resolve(backend, xw.device)

    def reference_call():  # what "auto" falls back to when no fused backend runs the call
        ref, _ = RECURRENCE.load("reference")
        return ref.recurrence(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr,
                              recurrent_grad_clip, reset=reset, zoneout=zoneout,
                              cell_params=cell_params)

    kw = {}
    for name, val in (("recurrent_grad_clip", recurrent_grad_clip), ("reset", reset),
                      ("zoneout", zoneout), ("cell_params", cell_params)):
        if val is None:
            continue
        if not _accepts(mod, name):
            which = mod.__name__.rsplit(".", 1)[-1]
            # what is missing: an argument, or (cell_params) the cell itself
            cell = CELLS[mode].title if name == "cell_params" and mode in CELLS else None
            if backend == "auto" and name != "recurrent_grad_clip":
                what = f"implement {cell}" if cell else f"fuse {name}="
                _warn_once((cell or name, which), f"fusedrnn: backend {which!r} does not {what}; "
                           "falling back to the reference backend")
                return reference_call()
            raise NotImplementedError(
                f"backend {which!r} does not implement {cell or name}; use one of the backends "
                f"that do: {', '.join(repr(b) for b in _fused_by(name))}"
            )
        kw[name] = val
    if backend == "auto" and cell_params is not None and hasattr(mod, "unsupported"):
        # a backend that runs the cell but not at this size (triton: LN rows wider than one
        # program) says why before it is chosen: "auto" falls back instead of raising
        why = mod.unsupported(mode, xw, w_hh, h0, w_hr)
        if why is not None:
            which = mod.__name__.rsplit(".", 1)[-1]
            # the next of "auto"'s backends for this device that runs the call, else the
            # reference (on a GPU: cuda after triton)
            sub, sub_name = _next_runner(which, mode, xw, w_hh, h0, w_hr, kw)
            _warn_once((mode, which, "size"), f"fusedrnn: backend {which!r} does not run this "
                       f"layer ({why}); falling back to the {sub_name} backend")
            if sub_name == "reference":
                return reference_call()
            return sub.recurrence(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, **kw)
    return mod.recurrence(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, **kw)
