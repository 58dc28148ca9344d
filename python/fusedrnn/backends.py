"""Choosing a backend for the recurrence op: "auto" | "reference" | "cpu" | "triton" | "cuda".

A backend is a module under ``fusedrnn.ops`` that provides

    unavailable() -> str | None
        None when the backend can run in this process, else why not and how to fix it.
    supports(device: torch.device) -> bool
        whether it runs on tensors of that device.
    recurrence(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr) -> (y, h_T, c_T)
        the op contract of ``fusedrnn.ops.reference`` with autograd.
    MODES (optional): the cell modes it runs; without it, the four torch.nn cells. A mode with
        ``cell_params`` (the LayerNorm cells) is passed them as the keyword ``cell_params``.

"auto" picks cpu for CPU tensors and the fastest GPU backend for CUDA tensors; when the compiled
part it wants is missing it falls back to the reference with a one-time warning.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from types import ModuleType

import torch

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


_CELL_NAMES = {"LN_LSTM": "LayerNormLSTM", "LN_GRU": "LayerNormGRU"}


def modes(mod: ModuleType) -> tuple[str, ...]:
    """The cell modes a backend module runs."""
    from .ops.cells import TORCH_MODES

    return getattr(mod, "MODES", TORCH_MODES)


def _for_mode(mod: ModuleType, backend: str, mode: str, device: torch.device) -> ModuleType:
    """``mod`` when it runs ``mode``; else, for "auto", the reference (with a one-time warning),
    and for a named backend a clear error naming the cell and the backends that run it."""
    if mode in modes(mod) or not isinstance(mode, str):
        return mod
    name = mod.__name__.rsplit(".", 1)[-1]
    cell = _CELL_NAMES.get(mode, mode)
    if backend == "auto":
        key = (f"mode:{mode}", device.type)
        if key not in RECURRENCE._warned:
            RECURRENCE._warned.add(key)
            warnings.warn(f"fusedrnn: backend {name!r} does not implement {cell} (mode {mode!r}); "
                          f"falling back to the reference backend on {device.type}",
                          stacklevel=4)
        return resolve("reference", device)
    able = [n for n in RECURRENCE.modules if RECURRENCE.load(n)[0] is not None
            and mode in modes(RECURRENCE.load(n)[0])]
    raise NotImplementedError(
        f"backend {backend!r} does not implement {cell} (mode {mode!r}); backends that do: "
        f"{', '.join(able)} (or backend='auto')"
    )


def recurrence(mode, xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None,
               backend: str = "auto", recurrent_grad_clip: float | None = None,
               cell_params=None):
    """Run the op contract of ``fusedrnn.ops.reference`` on the chosen backend.

    ``recurrent_grad_clip`` clamps the gradient carried back through the recurrence at every
    step (see ``recurrence_ref``); None (the default) leaves every backend's results untouched.
    ``cell_params``: the extra per-layer parameters of cells that have them
    (``ops.cells.CELL_PARAMS``, the LayerNorm cells); None for the others.
    """
    mod = _for_mode(resolve(backend, xw.device), backend, mode, xw.device)
    if cell_params is not None:
        if recurrent_grad_clip is None:
            return mod.recurrence(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr,
                                  cell_params=cell_params)
        return mod.recurrence(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr,
                              recurrent_grad_clip=recurrent_grad_clip, cell_params=cell_params)
    if recurrent_grad_clip is None:
        return mod.recurrence(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr)
    if "recurrent_grad_clip" not in inspect.signature(mod.recurrence).parameters:
        raise NotImplementedError(
            f"backend {mod.__name__.rsplit('.', 1)[-1]!r} does not implement recurrent_grad_clip; "
            "use backend='reference' (or another backend that does) for clipped BPTT"
        )
    return mod.recurrence(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr,
                          recurrent_grad_clip=recurrent_grad_clip)
