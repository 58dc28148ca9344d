"""Launchers of the fused Triton kernels: choose the path, allocate, launch. No autograd here.

Path per (mode, H, P, dtype), chosen by ``plan``:

* **resident** -- all of ``w_hh`` fits one program (``G*HP*PP*elt <= TILE_BYTES``; with the
  projection ``G*HP*PP*elt + PP*HP*elt <= TILE_MAX_BYTES``): one launch per sequence, no
  synchronisation, the state never leaves the chip.
* **persistent split** -- the gate rows are spread over ``HP // BU`` programs per batch block,
  each holding ``G*BU*PP*elt <= TILE_BYTES`` (at least 16 units, up to ``TILE_MAX_BYTES``);
  one launch per sequence with a grid barrier per step. Taken only on a GPU and only when every
  program of the grid can be resident at once (grid <= SM count), which is what makes the spin
  barrier deadlock-free.
* **per-step** -- the same split kernel, one launch per step (T forward, T+1 backward launches);
  the kernel boundary is the barrier. Taken when the split grid exceeds the SM count or the tile
  exceeds ``TILE_MAX_BYTES``, and in the Triton interpreter (which runs programs one after
  another, so a spin barrier would hang).

A layer whose smallest tile (16 units, full K) plus the staged state exceeds the GPU's shared
memory per program raises ``NotImplementedError`` (e.g. LSTM bf16 H > 512 on an A100).

The LSTM projection ``w_hr`` needs every unit's cell output in one program, so it is supported
on the resident path only; larger projected layers raise ``NotImplementedError``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..cells import GATES
from .kernels import rnn_bwd_kernel, rnn_fwd_kernel

MODE_ID = {"RNN_TANH": 0, "RNN_RELU": 1, "LSTM": 2, "GRU": 3}
#: saved activations per unit: RNN keeps h, LSTM i f g o, GRU r z n and W_hn h + b_hn
SAVED = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 4}
#: Weight bytes one program keeps on chip (Triton stages them in shared memory and feeds the
#: tensor cores from there): the largest tiles that compile without register spills on sm_90
#: (tools/triton_aot_report.py). Bigger tiles still compile, spilling, up to the MAX.
TILE_BYTES = 32 * 1024
#: largest tile accepted at all: the projected LSTM's resident path and the persistent split
#: with the minimum 16-unit tile (fits the shared memory of sm_80 and sm_90)
TILE_MAX_BYTES = 128 * 1024
NUM_WARPS = 8
#: batch columns per program: the minimum N of tl.dot
BLOCK_B = 16
#: no software pipelining of the time loop: step t+1 depends on step t, and the prefetch
#: buffers it would add cost registers
NUM_STAGES = 1
#: ptxas register cap: None leaves it to ptxas. It caps a few sm_80 backward kernels at 128
#: registers with small spills; maxnreg=255 removes those but makes several fp32 backward
#: kernels spill on sm_90 (tools/triton_aot_report.py), so the default stays.
MAXNREG = None
_TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


@dataclass(frozen=True)
class Plan:
    """Tiling of one layer: which path, the padded sizes and the per-program tile."""

    path: str  # "resident" | "persistent" | "per_step"
    HP: int  # H padded to a power of two (>= 16, the minimum K/M of tl.dot)
    PP: int  # P padded likewise
    BU: int  # cell units per program
    BB: int  # batch columns per program
    n_tiles: int  # programs per batch block along the units
    num_warps: int


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
         smem: int | None = None, tile_units: int | None = None) -> Plan:
    """Pick the path and the tiling of a layer.

    ``n_sm`` is the SM count of the device (0: never the persistent split), ``smem`` the shared
    memory one program may use (None: unlimited); ``tile_units`` forces a split into tiles of
    that many units (tests). Raises NotImplementedError for layers the kernels cannot hold.
    """
    G = GATES[mode]
    HP, PP = _pow2(H), _pow2(P)
    # on-chip bytes per weight: fp32 keeps a hi and a lo half (X3)
    elt = 8 if dtype == torch.float32 else (4 if interpreting() else 2)
    resident = G * HP * PP * elt + (PP * HP * elt if proj else 0)
    if tile_units is None and resident <= (TILE_MAX_BYTES if proj else TILE_BYTES):
        pl = Plan("resident", HP, PP, HP, BLOCK_B, 1, NUM_WARPS)
        return _check_smem(pl, resident + 4 * BLOCK_B * (PP + HP), smem, H, P, dtype)
    if proj:
        raise NotImplementedError(
            f"LSTM projection (w_hr) on the triton backend needs the layer to fit one program: "
            f"expected G*H*P + P*H weight bytes <= {TILE_MAX_BYTES}, got {resident} "
            f"(H={H}, proj_size={P}, {dtype}); use backend='reference' or 'cuda'")
    BU = tile_units
    if BU is None:
        BU = HP
        while BU > 16 and G * BU * PP * elt > TILE_BYTES:
            BU //= 2
    if BU < 16 or BU > HP or BU & (BU - 1):
        raise ValueError(f"tile_units must be a power of two in [16, {HP}], got {BU}")
    n_tiles = HP // BU
    n_bblocks = triton.cdiv(B, BLOCK_B)
    tile = G * BU * PP * elt
    persistent = tile <= TILE_MAX_BYTES and n_tiles * n_bblocks <= n_sm
    # 16 warps for the largest bf16/fp16 tiles: at 8, ptxas drops the H=768 LSTM kernels to 32
    # registers with 12-20 KB of spills; at 16 they spill under 1.2 KB (AOT report). Smaller
    # tiles and fp32 do better (or no worse) at 8.
    warps = 16 if (elt == 2 and tile >= 96 * 1024) else NUM_WARPS
    pl = Plan("persistent" if persistent else "per_step", HP, PP, BU, BLOCK_B, n_tiles, warps)
    # the full previous state [PP, BB] is staged next to the weights as the other dot operand
    return _check_smem(pl, tile + 4 * BLOCK_B * PP, smem, H, P, dtype)


def layer_plan(mode: str, H: int, P: int, B: int, dtype: torch.dtype, proj: bool,
               device: torch.device, tile_units: int | None = None) -> Plan:
    """``plan`` for a layer on ``device`` (its SM count and shared memory): what ``rnn_fwd`` runs.

    Deterministic in its arguments, so a backward can recompute the forward's plan.
    """
    return plan(mode, H, P, B, dtype, proj, sm_count(device), smem_limit(device), tile_units)


def _check_smem(pl: Plan, need: int, smem: int | None, H, P, dtype) -> Plan:
    """Refuse, clearly, a tiling whose shared memory (weights + staged state) cannot fit."""
    if smem is not None and need > smem:
        raise NotImplementedError(
            f"triton backend: hidden size too large for this GPU: H={H}, P={P}, {dtype} needs "
            f"about {need} B of shared memory per program (expected <= {smem}); "
            f"use backend='cuda' or 'reference'")
    return pl


def _regs() -> dict:
    """Launch/compile options for the register cap."""
    return {} if MAXNREG is None else {"maxnreg": MAXNREG}


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


def _consts(mode, pl: Plan, dtype, proj, lengths, reverse):
    G = GATES[mode]
    dot_t, prec, x3 = _dot_config(dtype)
    split = pl.path != "resident"
    return dict(
        MODE=MODE_ID[mode], G=G, NA=SAVED[mode], HP=pl.HP, PP=pl.PP, BU=pl.BU,
        BO=pl.PP if not split else pl.BU, BB=pl.BB, SPLIT=split, SYNC=pl.path == "persistent",
        HAS_PROJ=proj, HAS_LEN=lengths is not None, HAS_C=mode == "LSTM", REVERSE=bool(reverse),
        DOT_T=dot_t, PREC=prec, X3=x3,
    )


def rnn_fwd(mode, xw, w_hh, b_hh, h0, c0=None, lengths=None, reverse=False, w_hr=None,
            save=True, tile_units=None):
    """Run the fused forward kernel(s) of one layer and direction.

    Args: the op contract of ``fusedrnn.ops.reference`` (inputs already validated and
    contiguous); ``save`` keeps what backward needs; ``tile_units`` forces the split path.
    Returns ``(y [T, B, P], h_T [B, P], c_T [B, H] | None, saved)`` with ``saved`` a dict of
    fp32 tensors ``act [T, B, NA*H]``, ``hprev [T, B, P]``, ``cprev [T, B, H]`` (LSTM) and the
    ``plan`` used, or None when ``save`` is False.
    """
    T, B, GH = xw.shape
    G = GATES[mode]
    H, P = GH // G, h0.shape[1]
    dev, f32 = xw.device, torch.float32
    pl = layer_plan(mode, H, P, B, xw.dtype, w_hr is not None, dev, tile_units)
    k = _consts(mode, pl, xw.dtype, w_hr is not None, lengths, reverse)
    if k["HAS_C"] and c0 is None:
        c0 = torch.zeros(B, H, device=dev, dtype=xw.dtype)
    y = torch.empty(T, B, P, device=dev, dtype=xw.dtype)
    h_out = torch.empty(B, P, device=dev, dtype=f32)
    c_out = torch.empty(B, H, device=dev, dtype=f32) if k["HAS_C"] else None
    nb = save and T > 0
    act = torch.empty(T, B, SAVED[mode] * H, device=dev, dtype=f32) if nb else None
    hprev = torch.empty(T, B, P, device=dev, dtype=f32) if nb else None
    cprev = torch.empty(T, B, H, device=dev, dtype=f32) if nb and k["HAS_C"] else None
    if T == 0:
        return y, h0.clone(), None if c0 is None else c0.clone(), None
    grid = (triton.cdiv(B, pl.BB), pl.n_tiles)
    hbuf = counter = None
    if k["SPLIT"]:
        hbuf = torch.empty(2, B, P, device=dev, dtype=f32)
        hbuf[0] = h0
        counter = torch.zeros(grid[0], device=dev, dtype=torch.int32)
    args = (xw, w_hh, b_hh, w_hr, h0)
    tail = (y, h_out, c_out, act, hprev, cprev, hbuf, counter)
    run = dict(HAS_BIAS=b_hh is not None, SAVE=nb, num_warps=pl.num_warps,
               num_stages=NUM_STAGES, **_regs(), **k)
    if pl.path == "per_step":
        if k["HAS_C"]:
            c_out.copy_(c0)  # the cell state lives in c_out between launches
        for s in range(T):
            rnn_fwd_kernel[grid](*args, c_out, lengths, *tail, T, B, H, P, s, s + 1, **run)
    else:
        rnn_fwd_kernel[grid](*args, c0, lengths, *tail, T, B, H, P, 0, T, **run)
    saved = dict(act=act, hprev=hprev, cprev=cprev, plan=pl) if nb else None
    c_T = None if c_out is None else c_out.to(xw.dtype)
    return y, h_out.to(xw.dtype), c_T, saved


def rnn_bwd(mode, saved, w_hh, dy, dh_T, dc_T, lengths=None, reverse=False, w_hr=None,
            recurrent_grad_clip=None):
    """Run the fused backward kernel(s) of one layer and direction.

    Args: ``saved`` from ``rnn_fwd``; ``dy [T, B, P]``, ``dh_T [B, P]``, ``dc_T [B, H] | None``
    (any float dtype); ``recurrent_grad_clip`` clamps what each live step sends back to its
    input state (see ``recurrence_ref``). Returns fp32 ``(d_xw [T, B, G*H], d_rec [T, B, G*H], dh0 [B, P],
    dc0 [B, H] | None, dh_tot [T, B, P] | None)``: ``d_rec`` is the gradient of
    ``W_hh h + b_hh`` (the same tensor as ``d_xw`` except for GRU), ``dh_tot`` the gradient of
    each step's projected output (projection only), for the weight GEMMs after the loop.
    """
    pl: Plan = saved["plan"]
    T, B, P = dy.shape
    G = GATES[mode]
    H = w_hh.shape[0] // G
    dev, f32 = dy.device, torch.float32
    proj = w_hr is not None
    k = _consts(mode, pl, w_hh.dtype, proj, lengths, reverse)
    k.pop("SAVE", None)
    k["CLIP"] = recurrent_grad_clip is not None
    clip = 0.0 if recurrent_grad_clip is None else float(recurrent_grad_clip)
    dxw = torch.empty(T, B, G * H, device=dev, dtype=f32)
    drec = torch.empty_like(dxw) if mode == "GRU" else dxw
    dhtot = torch.empty(T, B, P, device=dev, dtype=f32) if proj else None
    r_state = dh_T.to(f32).contiguous().clone()
    dc_state = dc_T.to(f32).contiguous().clone() if k["HAS_C"] else None
    dh0 = torch.empty(B, P, device=dev, dtype=f32)
    dc0 = torch.empty(B, H, device=dev, dtype=f32) if k["HAS_C"] else None
    grid = (triton.cdiv(B, pl.BB), pl.n_tiles)
    counter = torch.zeros(grid[0], device=dev, dtype=torch.int32) if k["SYNC"] else None
    args = (w_hh, w_hr, dy, saved["act"], saved["hprev"], saved["cprev"], lengths,
            dxw, drec, dhtot, r_state, dc_state, dh0, dc0, counter, T, B, H, P)
    steps = [(s, s + 1) for s in range(T + 1)] if pl.path == "per_step" else [(0, T + 1)]
    for s0, s1 in steps:
        rnn_bwd_kernel[grid](*args, s0, s1, clip, num_warps=pl.num_warps, num_stages=NUM_STAGES,
                             **_regs(), **k)
    return dxw, drec, dh0, dc0, dhtot
