"""What one benchmark case runs: the models, the input sets, the call, and the parity check.

Cells: the classic ``RNN``, ``LSTM``, ``GRU`` (baseline and parity anchor: torch.nn's own layer
on the same weights) and the parallel-scan ``MinGRU``, ``MinLSTM`` (speed baseline: torch.nn's
GRU / LSTM at the same sizes, since that is what they replace; parity anchor: their own
sequential ``reference`` backend, because torch.nn has no such cell).

Parity rule (docs/architecture.md convention 5; flash-attention's): every output, final state
and, for ``fwdbwd``, every parameter gradient is compared with the same model run in float64 on
the same weights and inputs. The error of a tensor is ``max|got - f64| / max|f64|``. A backend
passes when its largest error is at most ``max(TOL[dtype], 2 * e_base)``, where ``e_base`` is the
error of the same-dtype baseline (torch.nn, or the reference for the min cells) against the same
float64 run: long sequences sum thousands of terms into the weight gradients, and no float32
implementation can beat the rounding of that sum. (Min cells beyond ``reference_max_t``: see
:func:`anchor_model`; there the bound is the dtype's floor.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

import fusedrnn

CLASSIC = ("RNN", "LSTM", "GRU")
PARALLEL = {"MinGRU": "GRU", "MinLSTM": "LSTM"}  # cell -> the torch.nn layer it replaces
CELLS = CLASSIC + tuple(PARALLEL)
MODES = ("fwd", "fwdbwd")
#: parity tolerance floor per dtype (relative to the float64 run's largest magnitude)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}
BASE_DEVICE_BACKENDS = {"cpu": ("reference", "cpu"), "cuda": ("reference", "triton", "cuda")}


def baseline_label(cell: str) -> str:
    """The row name of the speed baseline of ``cell``: torch.nn.<layer>."""
    return "torch.nn." + PARALLEL.get(cell, cell)


def backends_for(cell: str, device: torch.device, requested: list[str] | None) -> tuple[list[str], list[str]]:
    """The fusedrnn backends to sweep for ``cell`` on ``device``, and notes on those left out.

    Without ``requested``, the device's usual backends that can run here: on CPU that is
    reference and cpu (the Triton interpreter and the CUDA host emulation are for tests and far
    too slow to time; name them in ``--backends`` to time them anyway).
    """
    if cell in PARALLEL:
        from fusedrnn import scan

        available = scan.available_scan_backends()
        resolve = scan.resolve
    else:
        available = fusedrnn.available_backends()
        resolve = fusedrnn.backends.resolve
    names = list(requested) if requested else list(BASE_DEVICE_BACKENDS.get(device.type, ()))
    chosen, notes = [], []
    for name in names:
        if name not in available:
            notes.append(f"{cell}: backend {name!r} is not available in this process, skipped")
            continue
        try:
            resolve(name, device)
        except (RuntimeError, ValueError) as e:
            notes.append(f"{cell}: backend {name!r} cannot run on {device.type}: {e}")
            continue
        chosen.append(name)
    return chosen, notes


def make_baseline(cell: str, input_size: int, hidden: int, seed: int) -> nn.Module:
    """torch.nn's layer for ``cell`` (GRU for MinGRU, LSTM for MinLSTM), float32 on CPU."""
    torch.manual_seed(seed)
    return getattr(nn, PARALLEL.get(cell, cell))(input_size, hidden)


def make_weights(cell: str, input_size: int, hidden: int, seed: int) -> dict[str, Tensor]:
    """The state_dict every model of ``cell`` is loaded with (seeded, float32, CPU)."""
    if cell in PARALLEL:
        torch.manual_seed(seed)
        return getattr(fusedrnn, cell)(input_size, hidden, backend="reference").state_dict()
    return make_baseline(cell, input_size, hidden, seed).state_dict()


def make_model(cell: str, backend: str | None, input_size: int, hidden: int,
               weights: dict[str, Tensor], dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The model a row times: torch.nn's layer when ``backend`` is None, else fusedrnn's
    ``cell`` on ``backend``, with ``weights`` loaded, in ``dtype`` on ``device``."""
    if backend is None:
        m = getattr(nn, cell)(input_size, hidden)
    else:
        m = getattr(fusedrnn, cell)(input_size, hidden, backend=backend)
    m.load_state_dict(weights)
    return m.to(device=device, dtype=dtype)


def anchor_model(cell: str, input_size: int, hidden: int, weights, device, T: int,
                 reference_max_t: int) -> tuple[nn.Module, str]:
    """The float64 model every row of ``cell`` at length ``T`` is checked against, and its name.

    Classic cells: torch.nn's layer. Min cells: their ``reference`` backend up to
    ``reference_max_t`` (``--reference-max-t``, all of the default sweep); beyond, where the
    user chose not to wait for the Python loop, the anchor is the first compiled scan
    backend that runs here, in float64 -- a check of rounding, not of the algorithm, which the
    test suite checks against the reference.
    """
    if cell not in PARALLEL:
        return make_model(cell, None, input_size, hidden, weights, torch.float64, device), \
            f"torch.nn.{cell} float64"
    backend = "reference"
    if T > reference_max_t:
        fast = [b for b in backends_for(cell, device, None)[0] if b != "reference"]
        backend = fast[0] if fast else "reference"
    model = make_model(cell, backend, input_size, hidden, weights, torch.float64, device)
    return model, f"{cell} {backend} float64"


def input_sets(T: int, batch: int, input_size: int, hidden: int, dtype, device, seed: int,
               max_sets: int = 8, target_bytes: int = 64 << 20) -> list[tuple[Tensor, Tensor]]:
    """Rotating inputs (x [T, B, I], gy [T, B, H]): as many sets as fit in ``target_bytes``,
    between 2 and ``max_sets``, so a small case does not re-read last call's warm inputs."""
    per_set = T * batch * (input_size + hidden) * torch.finfo(dtype).bits // 8
    n = max(2, min(max_sets, math.ceil(target_bytes / max(per_set, 1))))
    if n * per_set > 4 * target_bytes:
        n = 1
    g = torch.Generator().manual_seed(seed + T)
    sets = []
    for _ in range(n):
        x = torch.randn(T, batch, input_size, generator=g)
        gy = torch.randn(T, batch, hidden, generator=g)
        sets.append((x.to(device=device, dtype=dtype), gy.to(device=device, dtype=dtype)))
    return sets


def _flat(h) -> list[Tensor]:
    return list(h) if isinstance(h, tuple) else [h]


def make_call(model: nn.Module, mode: str, sets: list[tuple[Tensor, Tensor]]):
    """``(call, run)``: ``run(i)`` runs the model on set ``i`` and returns what parity compares
    (output, final states and, for fwdbwd, the parameter gradients); ``call()`` runs on the next
    set in turn and is what gets timed."""
    params = list(model.parameters())
    if mode == "fwd":
        def run(i: int) -> list[Tensor]:
            with torch.no_grad():
                y, h = model(sets[i][0])
            return [y, *_flat(h)]
    elif mode == "fwdbwd":
        def run(i: int) -> list[Tensor]:
            x, gy = sets[i]
            y, h = model(x)
            y.backward(gy)
            out = [y.detach(), *(s.detach() for s in _flat(h)), *(p.grad for p in params)]
            # the next call allocates its gradients afresh, and this call's are freed with
            # ``out`` (inside a memory profile, not before it)
            for p in params:
                p.grad = None
            return out
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    counter = [0]

    def call():
        counter[0] = (counter[0] + 1) % len(sets)
        return run(counter[0])

    return call, run


def anchor_outputs(model64: nn.Module, sets, modes) -> dict[str, list[Tensor]]:
    """The float64 results on set 0 per mode (fwd compares a prefix of the fwdbwd list)."""
    x, gy = sets[0]
    sets64 = [(x.double(), gy.double())]
    out = {}
    if "fwdbwd" in modes:
        out["fwdbwd"] = make_call(model64, "fwdbwd", sets64)[1](0)
    if "fwd" in modes:
        out["fwd"] = make_call(model64, "fwd", sets64)[1](0)
    return out


def rel_error(got: list[Tensor], ref: list[Tensor]) -> float:
    """Largest ``max|got - ref| / max|ref|`` over the tensors; inf on NaN or a shape mismatch."""
    if len(got) != len(ref):
        return math.inf
    worst = 0.0
    for a, b in zip(got, ref):
        if a is None or a.shape != b.shape:
            return math.inf
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        scale = b.abs().max().item() if b.numel() else 0.0
        err = (a - b).abs().max().item() if b.numel() else 0.0
        if math.isnan(err):
            return math.inf
        worst = max(worst, err / scale if scale > 0 else err)
    return worst


def parity_bound(dtype: torch.dtype, base_err: float) -> float:
    """The largest error a backend may have: the dtype's floor or twice the baseline's."""
    return max(TOL[dtype], 2.0 * base_err)

