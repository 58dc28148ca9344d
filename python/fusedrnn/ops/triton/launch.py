"""Launchers of the fused Triton kernels: choose the path, allocate, launch. No autograd here.

Path per (mode, H, P, B, dtype), chosen by ``plan`` (table and reasons: docs/triton_backend.md):

* **resident** -- all of ``w_hh`` (and ``w_hr``) fits one program's on-chip tile
  (``<= TILE_BYTES``, fp32 ``TILE_BYTES_FP32``): one launch per sequence, no synchronisation,
  the state never leaves the chip.
* **persistent** (on-chip split) -- the gate rows are spread over ``HP // BU`` programs per batch
  block, each holding a tile within the budget (at least ``ONCHIP_MIN_UNITS`` units, full
  K <= ``ONCHIP_K_MAX``); one launch per sequence, a grid barrier per step.
* **stream** -- every other layer: the weights are re-read in K-chunks of ``BK`` every step (from
  L1/L2) instead of held, so registers and shared memory do not grow with H and no size is
  refused. One program per batch block up to ``STREAM_SOLO_MAX`` units (a CTA barrier per step),
  else tiles sized to keep a program's weight slice within ``STREAM_L1_BYTES`` and a grid
  barrier per step (two with the LSTM projection).
* **per-step** -- the split kernels with one launch per step (per half-step for the projected
  split), the kernel boundary being the barrier: when the split grid exceeds the SM count (the
  spin barrier needs every program resident), in the Triton interpreter, and on every device
  whose (device, torch, triton) combination has not been validated on hardware
  (``validated.py``: the grid barrier is opt-in until then).

A cell that normalises whole rows (``Cell.row_wise``: the LayerNorm cells) runs only where one
program owns every unit of its batch columns: resident, else the streamed path with one program
per batch block up to ``ROW_UNITS_MAX`` units; beyond, ``plan`` refuses (NotImplementedError)
rather than split a row over programs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..cells import CELL_STATE, CELLS, GATES, MODE_ID
from . import validated
from .kernels import rnn_bwd_kernel, rnn_fwd_kernel

#: activations per unit the kernels save (``act``): the cell's own (LSTM i f g o, GRU r z n and
#: W_hn h + b_hn), or h itself for a cell that saves none (its backward reads h, which y holds
#: only in the input dtype)
SAVED = {name: max(c.saved, 1) for name, c in CELLS.items()}
#: Weight bytes one program keeps on chip (Triton stages them in shared memory and feeds the
#: tensor cores from there): the largest tiles that compile without register spills on sm_90
#: (tools/triton_aot_report.py). Larger layers stream their weights instead.
TILE_BYTES = 32 * 1024
#: the same for fp32, whose tiles hold a hi and a lo half (8 bytes per weight)
TILE_BYTES_FP32 = 16 * 1024
#: on-chip tiles hold the full K (= P) of the product; beyond this, full-K tiles spill
ONCHIP_K_MAX = 128
#: narrowest on-chip split tile
ONCHIP_MIN_UNITS = 32
#: streamed path: K-chunk of the products, units per program, and the padded H up to which one
#: program per batch block holds every unit (no grid barrier, only a CTA barrier per step)
STREAM_BK = 16
STREAM_BU = 64
STREAM_SOLO_MAX = 64
#: weight bytes per program a streamed split tile aims to keep within (to stay in L1)
STREAM_L1_BYTES = 128 * 1024
#: streamed tiles of at least this many units run 8 warps, narrower ones 4
STREAM_WARPS8_UNITS = 32
NUM_WARPS = 8
#: the widest (padded) layer a row-wise cell (LayerNorm) runs: one program per batch block holds
#: every unit of its rows on the streamed path; wider rows would need a cross-program reduction
ROW_UNITS_MAX = 128
#: batch columns per program: the minimum N of tl.dot
BLOCK_B = 16
#: no software pipelining of the on-chip paths' time loop (their innermost loop): the prefetch
#: buffers for step t+1's loads cost registers the weight tiles need
NUM_STAGES = 1
#: pipeline stages of the streamed path's K-chunk loop
STREAM_STAGES = 2
#: polls of the grid barrier's spin before a program gives up and flags the launch as failed
#: (the launcher then raises): at ~0.5-1 us per gpu-scope acquire load (modelled), ~8-17 s,
#: far beyond any legitimate wait of one step
BARRIER_SPIN_MAX = 1 << 24
#: what a program that gave up adds to its batch block's barrier counter (tiles._grid_barrier);
#: barrier targets (at most 2·T·n_tiles) must stay below it
TIMED_OUT = 1 << 30
_TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


@dataclass(frozen=True)
class Plan:
    """Tiling of one layer: which path, the padded sizes and the per-program tile."""

    path: str  # "resident" | "persistent" | "stream" | "per_step"
    HP: int  # H padded to a power of two (>= 16, the minimum K/M of tl.dot)
    PP: int  # P padded likewise
    BU: int  # cell units per program
    BB: int  # batch columns per program
    n_tiles: int  # programs per batch block along the units
    num_warps: int
    stream: bool = False  # weights re-read in K-chunks every step instead of held on chip
    BK: int = 0  # K-chunk of the streamed products
    BO: int = 0  # output (h) rows per program: PP resident, BU split, P's share with projection
    stages: int = 1  # software-pipeline stages (Triton's num_stages) of the innermost loop


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 0 elsewhere (no persistent split there)."""
    if device.type != "cuda" or interpreting():
        return 0
    return torch.cuda.get_device_properties(device).multi_processor_count


def smem_limit(device: torch.device) -> int | None:
    """Shared memory one program may use on ``device`` (None: no limit, the interpreter)."""
    if device.type != "cuda" or interpreting():
        return None
    props = torch.cuda.get_device_properties(device)
    optin = getattr(props, "shared_memory_per_block_optin", None)
    if optin:
        return int(optin)
    # CUDA programming guide, per-block opt-in maxima: A100 163 KiB, H100 227 KiB, else 99 KiB
    return {(8, 0): 166912, (9, 0): 232448}.get((props.major, props.minor), 101376)


def plan(mode: str, H: int, P: int, B: int, dtype: torch.dtype, proj: bool, n_sm: int,
         smem: int | None = None, tile_units: int | None = None,
         grid_barrier: bool = True) -> Plan:
    """Pick the path and the tiling of a layer.

    ``n_sm`` is the SM count of the device (0: no grid barrier, the interpreter), ``smem`` the
    shared memory one program may use (None: unlimited); ``tile_units`` forces tiles of that
    many units (tests); ``grid_barrier`` False keeps the same tiling but runs a multi-program
    split per step instead of persistently (see ``validated.py``). Every layer has a path; only
    a GPU whose shared memory per block cannot hold even a streamed tile raises
    NotImplementedError.
    """
    G = GATES[mode]
    HP, PP = _pow2(H), _pow2(P)
    # on-chip bytes per weight: fp32 keeps a hi and a lo half (X3)
    elt = 8 if dtype == torch.float32 else (4 if interpreting() else 2)
    budget = TILE_BYTES_FP32 if dtype == torch.float32 else TILE_BYTES
    resident = G * HP * PP * elt + (PP * HP * elt if proj else 0)
    if CELLS[mode].row_wise:
        return _row_plan(mode, H, P, HP, PP, dtype, resident <= budget, smem, tile_units)
    if tile_units is None and resident <= budget:
        pl = Plan("resident", HP, PP, HP, BLOCK_B, 1, NUM_WARPS, BO=PP, stages=NUM_STAGES)
        return _check_smem(pl, resident + 4 * BLOCK_B * (PP + HP), smem, H, P, dtype)
    n_bblocks = triton.cdiv(B, BLOCK_B)
    if tile_units is not None:
        BU = tile_units
        if BU < 16 or BU > HP or BU & (BU - 1):
            raise ValueError(f"tile_units must be a power of two in [16, {HP}], got {BU}")
        stream = G * BU * PP * elt > budget or proj
    elif HP <= STREAM_SOLO_MAX:
        # small layers whose tile is over budget: one program per batch block, weights streamed
        # (a CTA barrier per step beats a split's grid barrier at this size)
        BU, stream = HP, True
    else:
        # weights on chip, split over programs of at least ONCHIP_MIN_UNITS units (narrower
        # tiles leave most warps idle in the product and spilled in the AOT report), full K
        BU = HP
        while BU > ONCHIP_MIN_UNITS and G * BU * PP * elt > budget:
            BU //= 2
        stream = (G * BU * PP * elt > budget or PP > ONCHIP_K_MAX
                  or HP // BU * n_bblocks > n_sm or proj)
        if stream:
            BU = _stream_units(G, H, P, dtype, n_bblocks, n_sm)
    # streamed tiles need not cover a power of two: masks end the last one (768 = 12 x 64)
    n_tiles = triton.cdiv(H, BU) if stream else HP // BU
    # one program per batch block needs no grid barrier; more need all of them co-resident
    barrier_ok = n_tiles == 1 or (grid_barrier and n_tiles * n_bblocks <= n_sm)
    if stream:
        path = "stream" if barrier_ok else "per_step"
        warps = NUM_WARPS if BU >= STREAM_WARPS8_UNITS else 4  # [BU, 16] products: few warps
        # output rows per program: the projection's P rows are spread over the same programs
        BO = max(16, triton.next_power_of_2(triton.cdiv(P, n_tiles))) if proj else BU
        BK = STREAM_BK if BU > 16 else 2 * STREAM_BK  # 16-unit tiles afford wider chunks
        # the K-chunk loop is the innermost loop: two stages prefetch chunk k+1 (cp.async) while
        # chunk k is multiplied, hiding the L1/L2 latency of each chunk's loads. Not for 64-unit
        # LSTM tiles in fp32 or with the projection: with the prefetch buffers they spill 4-32 B
        # on sm_90 (AOT report).
        fat = G == 4 and BU >= 64 and (dtype == torch.float32 or proj)
        pl = Plan(path, HP, PP, BU, BLOCK_B, n_tiles, warps, True, BK, BO,
                  1 if fat else STREAM_STAGES)
        # shared memory: layout conversions and the staged dot operands of one chunk
        return _check_smem(pl, 4 * (G * BU + BLOCK_B) * BK * pl.stages * 2, smem, H, P, dtype)
    pl = Plan("persistent" if barrier_ok else "per_step", HP, PP, BU, BLOCK_B, n_tiles,
              NUM_WARPS, BO=BU, stages=NUM_STAGES)
    # the full previous state [PP, BB] is staged next to the weights as the other dot operand
    return _check_smem(pl, G * BU * PP * elt + 4 * BLOCK_B * PP, smem, H, P, dtype)


def _row_plan(mode: str, H: int, P: int, HP: int, PP: int, dtype: torch.dtype, fits: bool,
              smem: int | None, tile_units: int | None) -> Plan:
    """The plan of a row-wise cell: one program holds every unit of its batch columns, so the
    normalisation needs no exchange. Resident when its weights fit on chip, else streamed with
    one program per batch block (``tile_units=HP`` forces that path, for tests); a split of the
    units is refused."""
    cell = CELLS[mode]
    if tile_units is not None and tile_units != HP:
        raise ValueError(f"triton backend: {cell.title} normalises whole rows, so its units "
                         f"cannot be split over programs: tile_units must be None or {HP}, got "
                         f"{tile_units}")
    elt = 8 if dtype == torch.float32 else (4 if interpreting() else 2)
    if tile_units is None and fits:
        pl = Plan("resident", HP, PP, HP, BLOCK_B, 1, NUM_WARPS, BO=PP, stages=NUM_STAGES)
        return _check_smem(pl, GATES[mode] * HP * PP * elt + 4 * BLOCK_B * (PP + HP), smem, H,
                           P, dtype)
    if HP > ROW_UNITS_MAX:
        raise NotImplementedError(
            f"triton backend: {cell.title} layer-normalises whole rows of G*H values, which one "
            f"Triton program holds only up to H={ROW_UNITS_MAX} (got H={H}); wider layers would "
            f"split a row over programs, which this backend does not do. Use backend='reference' "
            f"for CUDA tensors (or 'cpu' for CPU tensors)")
    G = GATES[mode]
    fat = G == 4 and HP >= 64 and dtype == torch.float32
    BK = STREAM_BK if HP > 16 else 2 * STREAM_BK
    # 8 warps (16 halve the register cap to 128 and spill far more: AOT report)
    pl = Plan("stream", HP, PP, HP, BLOCK_B, 1, NUM_WARPS if HP >= STREAM_WARPS8_UNITS else 4,
              True, BK, HP, 1 if fat else STREAM_STAGES)
    return _check_smem(pl, 4 * (G * HP + BLOCK_B) * BK * pl.stages * 2, smem, H, P, dtype)


def _stream_units(G: int, H: int, P: int, dtype: torch.dtype, n_bblocks: int, n_sm: int) -> int:
    """Units per program of a streamed split layer.

    The widest tile (at most STREAM_BU) whose weight slice, re-read every step, fits
    STREAM_L1_BYTES -- so after the first step it can be served from the SM's L1 rather than L2
    (modelled: the kernels use a few KiB of shared memory, leaving most of the 256 KiB L1/shared
    array to L1) -- then widened again if the grid would exceed the SMs (no persistent launch).
    """
    src = 4 if dtype == torch.float32 else 2  # streamed in the weights' own dtype
    BU = STREAM_BU
    while BU > 16 and G * BU * P * src > STREAM_L1_BYTES:
        BU //= 2
    while BU < STREAM_BU and triton.cdiv(H, BU) * n_bblocks > n_sm:
        BU *= 2
    return BU


def layer_plan(mode: str, H: int, P: int, B: int, dtype: torch.dtype, proj: bool,
               device: torch.device, tile_units: int | None = None) -> Plan:
    """``plan`` for a layer on ``device`` (its SM count and shared memory): what ``rnn_fwd`` runs.

    The grid-barrier paths only where ``validated.grid_barrier_allowed(device)``. Deterministic
    in its arguments (and that setting), so a backward can recompute the forward's plan.
    """
    n_sm = sm_count(device)
    barrier = n_sm > 0 and validated.grid_barrier_allowed(device)
    return plan(mode, H, P, B, dtype, proj, n_sm, smem_limit(device), tile_units, barrier)


def uses_grid_barrier(pl: Plan) -> bool:
    """Whether a plan runs persistently with a grid barrier (several programs per batch block
    spinning on each other): the paths that need every program co-resident."""
    return pl.path in ("persistent", "stream") and pl.n_tiles > 1


def _counter(n_bblocks: int, device) -> torch.Tensor:
    """Zeroed barrier counters, one per batch block."""
    return torch.zeros(n_bblocks, device=device, dtype=torch.int32)


def _check_barrier(counter, k: dict, what: str) -> None:
    """Raise if a program of a grid-barrier launch gave up waiting (a counter marked TIMED_OUT).

    Reading the flag synchronises with the kernel (a host sync per persistent launch); skipped
    while a CUDA graph is being captured, where a sync is not allowed."""
    if counter is None or not k["SYNC"] or k["SOLO"]:
        return
    if counter.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if bool((counter >= TIMED_OUT).any()):
        raise RuntimeError(
            f"triton backend: the {what} kernel's grid barrier timed out after "
            f"{BARRIER_SPIN_MAX} polls: not every program of the grid was resident at once (MPS "
            f"or green-context SM limits, or another persistent kernel holding SMs?). Its results "
            f"are invalid. Unset FUSEDRNN_TRITON_GRID_BARRIER (or call "
            f"fusedrnn.ops.triton.validated.allow_grid_barrier(False)) to run per step.")


def _check_smem(pl: Plan, need: int, smem: int | None, H, P, dtype) -> Plan:
    """Refuse, clearly, a tiling whose shared memory (weights + staged state) cannot fit."""
    if smem is not None and need > smem:
        raise NotImplementedError(
            f"triton backend: hidden size too large for this GPU: H={H}, P={P}, {dtype} needs "
            f"about {need} B of shared memory per program (expected <= {smem}); "
            f"use backend='cuda' or 'reference'")
    return pl


def _dot_config(dtype: torch.dtype):
    """(operand dtype, input_precision, X3) of the kernels' products.

    fp32 runs on tensor cores as three TF32 products of hi/lo halves (X3, ~22 mantissa bits;
    plain "ieee" lowers to FMA with the weights replicated per thread, which spills), bf16/fp16
    as themselves with fp32 accumulation. The interpreter computes bf16 wrongly, so there the
    operands are upcast to fp32; X3 still runs there for fp32 (the split and the three products,
    without the tensor cores' TF32 truncation).
    """
    if interpreting():
        return tl.float32, "ieee", dtype == torch.float32
    if dtype == torch.float32:
        return tl.float32, "tf32", True
    return _TL_DTYPE[dtype], "tf32", False


def _consts(mode, pl: Plan, dtype, proj, lengths, reverse, reset=None, zoneout=None):
    G = GATES[mode]
    dot_t, prec, x3 = _dot_config(dtype)
    split = pl.path != "resident"
    return dict(
        MODE=MODE_ID[mode], G=G, NA=SAVED[mode], HP=pl.HP, PP=pl.PP, BU=pl.BU,
        BO=pl.BO, BB=pl.BB, SPLIT=split, PHASE=0,
        SYNC=pl.path in ("persistent", "stream"), SOLO=pl.n_tiles == 1, STREAM=pl.stream,
        BK=max(pl.BK, 16), SPIN=BARRIER_SPIN_MAX,
        HAS_PROJ=proj, HAS_LEN=lengths is not None, HAS_C=CELL_STATE[mode], REVERSE=bool(reverse),
        DOT_T=dot_t, PREC=prec, X3=x3, HAS_RESET=reset is not None,
        HAS_ZO=zoneout is not None, NORM=CELLS[mode].norm_recurrent,
        NORM_C=CELLS[mode].norm_state,
    )


def bwd_traits(mode) -> dict:
    """The cell's traits the backward kernel reads (constexprs): ``REC``, the recurrent-side gate
    gradients differ from the input-side ones (written to ``drec``); ``DIRECT``, h_new depends
    on h_prev outside W_hh (backward reads ``hprev`` and carries the cell's direct dh_prev)."""
    return dict(REC=CELLS[mode].recurrent_grad_differs, DIRECT=CELLS[mode].direct_h_grad,
                NCP=max(1, cp_units(mode)))


def cp_units(mode) -> int:
    """The cell_params' total size in units of H (0 for torch.nn's cells)."""
    return sum(k for _, k in CELLS[mode].cell_params)


def _on(device: torch.device):
    """Launch on ``device``: Triton launches on the *current* CUDA device, which need not be the
    tensors' (e.g. data-parallel code that moves the model without ``torch.cuda.set_device``)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _lengths(lengths, device):
    """``lengths`` as the kernels read it: contiguous int64 on ``device`` (they index it with
    unit stride, so a strided view would be read wrongly)."""
    return None if lengths is None else lengths.to(device, torch.int64).contiguous()


def _phases(k: dict) -> tuple:
    """Launches per step on the per-step path: a projected split layer exchanges twice per step,
    so each half gets its own launch (the kernel boundary is the barrier)."""
    return (1, 2) if k["HAS_PROJ"] and k["SPLIT"] else (0,)


def _reset(reset, device):
    """``reset`` [T, B] as the kernels read it: contiguous fp32 on ``device`` (or None)."""
    return None if reset is None else reset.to(device, torch.float32).contiguous()


def _zoneout_parts(zoneout, P, device):
    """Zoneout's mask [T, B, P (+ H)] as the kernels read it: its h part [T, B, P] and its c
    part [T, B, H] (None without a cell state), each contiguous on ``device``, in its own dtype
    (xw's: a 16-bit mask tile holds half the registers of a float32 one)."""
    if zoneout is None:
        return None, None
    z = zoneout.to(device)
    return z[..., :P].contiguous(), (z[..., P:].contiguous() if z.shape[2] > P else None)


def rnn_fwd(mode, xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None,
            save=True, tile_units=None, reset=None, zoneout=None, cp=None):
    """Run the fused forward kernel(s) of one layer and direction.

    Args: the op contract of ``fusedrnn.ops.reference`` (inputs already validated and
    contiguous); ``save`` keeps what backward needs; ``tile_units`` forces the split path.
    Returns ``(y [T, B, P], h_T [B, P], c_T [B, H] | None, saved)`` with ``saved`` a dict of
    fp32 tensors ``act [T, B, NA*H]``, ``hprev [T, B, P]``, ``cprev [T, B, H]`` (LSTM),
    ``rnorm [T, B, G*H]`` and ``stats [T, 2, B]`` (row-normalised cells) and the ``plan`` used,
    or None when ``save`` is False. ``reset`` [T, B] and ``zoneout`` [T, B, Z] or None: see the
    op contract. ``cp``: the cell_params concatenated into one contiguous vector (the
    LayerNorm cells), else None.
    """
    T, B, GH = xw.shape
    G = GATES[mode]
    H, P = GH // G, h0.shape[1]
    dev, f32 = xw.device, torch.float32
    pl = layer_plan(mode, H, P, B, xw.dtype, w_hr is not None, dev, tile_units)
    k = _consts(mode, pl, xw.dtype, w_hr is not None, lengths, reverse, reset, zoneout)
    lengths, reset = _lengths(lengths, dev), _reset(reset, dev)
    zoh, zoc = _zoneout_parts(zoneout, P, dev)
    if k["HAS_C"] and c0 is None:
        c0 = torch.zeros(B, H, device=dev, dtype=xw.dtype)
    y = torch.empty(T, B, P, device=dev, dtype=xw.dtype)
    h_out = torch.empty(B, P, device=dev, dtype=f32)
    c_out = torch.empty(B, H, device=dev, dtype=f32) if k["HAS_C"] else None
    nb = save and T > 0
    act = torch.empty(T, B, SAVED[mode] * H, device=dev, dtype=f32) if nb else None
    hprev = torch.empty(T, B, P, device=dev, dtype=f32) if nb else None
    cprev = torch.empty(T, B, H, device=dev, dtype=f32) if nb and k["HAS_C"] else None
    norm = k["NORM"] or k["NORM_C"]
    rnorm = torch.empty(T, B, G * H, device=dev, dtype=f32) if nb and norm else None
    stats = torch.empty(T, 2, B, device=dev, dtype=f32) if nb and norm else None
    if T == 0:
        return y, h0.clone(), None if c0 is None else c0.clone(), None
    grid = (triton.cdiv(B, pl.BB), pl.n_tiles)
    hbuf = mbuf = counter = None
    if k["SPLIT"]:
        hbuf = torch.empty(2, B, P, device=dev, dtype=f32)
        hbuf[0] = h0
        counter = _counter(grid[0], dev)
        if w_hr is not None:
            mbuf = torch.empty(B, H, device=dev, dtype=f32)
    args = (xw, w_hh, b_hh, w_hr, h0)
    tail = (y, h_out, c_out, act, hprev, cprev, rnorm, stats, hbuf, mbuf, counter)
    run = dict(HAS_BIAS=b_hh is not None, SAVE=nb, num_warps=pl.num_warps,
               num_stages=pl.stages, **k)
    if pl.path == "per_step":
        if k["HAS_C"]:
            c_out.copy_(c0)  # the cell state lives in c_out between launches
        launches = [(c_out, s, s + 1, phase) for s in range(T) for phase in _phases(k)]
    else:
        launches = [(c0, 0, T, 0)]  # SYNC launches must start at step 0 (the barrier counts)
    with _on(dev):
        for c_in, s0, s1, phase in launches:
            run["PHASE"] = phase
            rnn_fwd_kernel[grid](*args, c_in, lengths, reset, zoh, zoc, cp, *tail, T, B, H, P,
                                 s0, s1, **run)
    _check_barrier(counter, k, "forward")
    saved = dict(act=act, hprev=hprev, cprev=cprev, rnorm=rnorm, stats=stats,
                 plan=pl) if nb else None
    c_T = None if c_out is None else c_out.to(xw.dtype)
    return y, h_out.to(xw.dtype), c_T, saved


def rnn_bwd(mode, saved, w_hh, dy, dh_T, dc_T, lengths=None, reverse=False, w_hr=None,
            recurrent_grad_clip=None, reset=None, zoneout=None, cp=None):
    """Run the fused backward kernel(s) of one layer and direction.

    Args: ``saved`` from ``rnn_fwd``; ``dy [T, B, P]``, ``dh_T [B, P]``, ``dc_T [B, H] | None``
    (any float dtype); ``recurrent_grad_clip`` clamps what each live step sends back to its
    input state (see ``recurrence_ref``). Returns fp32 ``(d_xw [T, B, G*H], d_rec [T, B, G*H], dh0 [B, P],
    dc0 [B, H] | None, dh_tot [T, B, P] | None)``: ``d_rec`` is the gradient of
    ``W_hh h + b_hh`` (the same tensor as ``d_xw`` except for GRU), ``dh_tot`` the gradient of
    each step's projected output (projection only), for the weight GEMMs after the loop.
    Row-normalised cells (``cp``, the forward's cell_params vector) return two more:
    ``d_wh [T, B, G*H]``, the gradient of ``W_hh h`` before its normalisation (for d_w_hh), and
    ``d_cp_terms [T, B, NCP*H]``, whose sum over T and B is the gradient of ``cp``; (None, None)
    for the other cells.
    """
    pl: Plan = saved["plan"]
    T, B, P = dy.shape
    G = GATES[mode]
    H = w_hh.shape[0] // G
    dev, f32 = dy.device, torch.float32
    proj = w_hr is not None
    k = _consts(mode, pl, w_hh.dtype, proj, lengths, reverse, reset, zoneout)
    lengths, reset = _lengths(lengths, dev), _reset(reset, dev)
    zoh, zoc = _zoneout_parts(zoneout, P, dev)
    k.pop("SAVE", None)
    k["CLIP"] = recurrent_grad_clip is not None
    k.update(bwd_traits(mode))
    clip = 0.0 if recurrent_grad_clip is None else float(recurrent_grad_clip)
    dxw = torch.empty(T, B, G * H, device=dev, dtype=f32)
    drec = torch.empty_like(dxw) if CELLS[mode].recurrent_grad_differs else dxw
    dhtot = torch.empty(T, B, P, device=dev, dtype=f32) if proj else None
    norm = k["NORM"] or k["NORM_C"]
    dwh = torch.empty_like(dxw) if norm else None
    dcp = torch.empty(T, B, k["NCP"] * H, device=dev, dtype=f32) if norm else None
    r_state = dh_T.to(f32).contiguous().clone()
    dc_state = dc_T.to(f32).contiguous().clone() if k["HAS_C"] else None
    dh0 = torch.empty(B, P, device=dev, dtype=f32)
    dc0 = torch.empty(B, H, device=dev, dtype=f32) if k["HAS_C"] else None
    grid = (triton.cdiv(B, pl.BB), pl.n_tiles)
    counter = _counter(grid[0], dev) if k["SYNC"] else None
    args = (w_hh, w_hr, dy, saved["act"], saved["hprev"], saved["cprev"], lengths, reset,
            zoh, zoc, cp, saved.get("rnorm"), saved.get("stats"), dxw, drec, dhtot, dwh, dcp,
            r_state, dc_state, dh0, dc0, counter, T, B, H, P)
    if pl.path == "per_step":
        steps = [(s, s + 1, phase) for s in range(T + 1) for phase in _phases(k)]
    else:
        steps = [(0, T + 1, 0)]
    with _on(dev):
        for s0, s1, phase in steps:
            k["PHASE"] = phase
            rnn_bwd_kernel[grid](*args, s0, s1, clip, num_warps=pl.num_warps,
                                 num_stages=pl.stages, **k)
    _check_barrier(counter, k, "backward")
    return dxw, drec, dh0, dc0, dhtot, dwh, dcp
