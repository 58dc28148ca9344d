"""Tile helpers shared by the fused time loops in ``kernels.py``: loads and stores of
[units, batch] tiles, the products (on-chip tiles, or weights streamed in K-chunks), the fp32
3xTF32 split and the barriers between steps.
"""

import triton
import triton.language as tl

from ..cells import LN_EPS

_LN_EPS = tl.constexpr(LN_EPS)


@triton.jit
def _grid_barrier(counter, target, SPIN_MAX: tl.constexpr):
    """Wait until ``target`` arrivals: bar.sync, a gpu-scope release add, an acquire spin.

    The spin is bounded: after ``SPIN_MAX`` polls the program adds ``TIMED_OUT`` (2**30) to the
    counter and goes on (its results are then wrong; the launcher sees the mark and raises), so
    a grid that is not co-resident ends in an error instead of a hang. The mark also lifts the
    counter past every later target of the launch (targets stay below 2**30), so no program of
    the batch block waits again: a failed launch costs one spin budget, not one per step.
    """
    tl.debug_barrier()  # every thread's stores of this step are issued before the release
    tl.atomic_add(counter, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
    n = 0
    while (seen < target) & (n < SPIN_MAX):
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        n += 1
    if seen < target:
        tl.atomic_add(counter, 1073741824, sem="relaxed", scope="gpu")  # TIMED_OUT in launch.py
    tl.debug_barrier()  # no thread reads the exchanged state before the acquire


@triton.jit
def _load_tile(ptr, rows, cols, rmask, cmask, srow, scol, DT: tl.constexpr):
    """A [len(rows), len(cols)] weight tile ptr[rows * srow + cols * scol], zero where masked."""
    offs = rows[:, None].to(tl.int64) * srow + cols[None, :].to(tl.int64) * scol
    return tl.load(ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(DT)


@triton.jit
def _split_tf32(x):
    """x = hi + lo with hi on the TF32 grid (low 13 mantissa bits cleared): fp32 in, fp32 out."""
    hi = (x.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
    return hi, x - hi


@triton.jit
def _wload(ptr, rows, cols, rmask, cmask, srow, scol, DT: tl.constexpr, X3: tl.constexpr):
    """A weight tile as the (hi, lo) pair the dot takes; lo is a dummy unless X3."""
    w = _load_tile(ptr, rows, cols, rmask, cmask, srow, scol, DT)
    if X3:
        return _split_tf32(w)
    return w, w


@triton.jit
def _mm(w_hi, w_lo, x, DT: tl.constexpr, PREC: tl.constexpr, X3: tl.constexpr):
    """w @ x with fp32 accumulation.

    X3 (fp32 on a GPU): three TF32 tensor-core products hi*hi + hi*lo + lo*hi, about 22
    mantissa bits, with both weight halves plain dot operands so they stay staged in shared
    memory (Triton's own "tf32x3" splits the weights in registers, which spills).
    """
    if X3:
        x_hi, x_lo = _split_tf32(x)
        acc = tl.dot(w_hi, x_hi, input_precision="tf32")
        acc = tl.dot(w_hi, x_lo, acc, input_precision="tf32")
        return tl.dot(w_lo, x_hi, acc, input_precision="tf32")
    return tl.dot(w_hi, x.to(DT), input_precision=PREC)


@triton.jit
def _offs(rows, cols, rmask, cmask, scol):
    """int32 offsets rows + cols * scol of a [units, batch] tile and its mask, built once.

    Built before the time loop and shared by every tile of the same stride, so the loop holds a
    few int32 tensors instead of one 64-bit pointer tensor per load and store.
    """
    return rows[:, None] + cols[None, :] * scol, rmask[:, None] & cmask[None, :]


@triton.jit
def _ld(ptr, offs, mask):
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _ld_gates(base, offs, mask, H, N: tl.constexpr):
    """The ``N`` (1 to 4) per-gate tiles ``base[g * H + offs]`` as fp32, each loaded only when
    g < N; the slots past N repeat gate 0 (dummies the cell does not read)."""
    x0 = _ld(base, offs, mask)
    x1 = x0
    x2 = x0
    x3 = x0
    if N > 1:
        x1 = _ld(base + H, offs, mask)
    if N > 2:
        x2 = _ld(base + 2 * H, offs, mask)
    if N > 3:
        x3 = _ld(base + 3 * H, offs, mask)
    return x0, x1, x2, x3


@triton.jit
def _st_gates(base, offs, mask, H, N: tl.constexpr, vals):
    """Store the first ``N`` tiles of the tuple ``vals`` at ``base[g * H + offs]``."""
    for g in tl.static_range(N):
        _st(base + g * H, offs, mask, vals[g])


@triton.jit
def _ldx(ptr, offs, mask):
    """Load state another program wrote this launch, after a barrier (whose acquire invalidates
    L1, so any load is fresh; .cg is a hint that the pipelined loop turns into cp.async.ca)."""
    return tl.load(ptr + offs, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)


@triton.jit
def _st(ptr, offs, mask, val):
    tl.store(ptr + offs, val.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gate_tiles(ptr, rows, cols, rmask, cmask, gstride, srow, scol, G: tl.constexpr,
                DT: tl.constexpr, X3: tl.constexpr):
    """The ``G`` gate tiles of a weight as the tuple (hi0, lo0, hi1, lo1, ...), each
    ``ptr[g * gstride + rows * srow + cols * scol]``; unused slots repeat gate 0."""
    w0, v0 = _wload(ptr, rows, cols, rmask, cmask, srow, scol, DT, X3)
    w1, v1 = w0, v0
    w2, v2 = w0, v0
    w3, v3 = w0, v0
    if G > 1:
        w1, v1 = _wload(ptr + gstride, rows, cols, rmask, cmask, srow, scol, DT, X3)
    if G > 2:
        w2, v2 = _wload(ptr + 2 * gstride, rows, cols, rmask, cmask, srow, scol, DT, X3)
    if G > 3:
        w3, v3 = _wload(ptr + 3 * gstride, rows, cols, rmask, cmask, srow, scol, DT, X3)
    return (w0, v0, w1, v1, w2, v2, w3, v3)


@triton.jit
def _gates_mm(wt, x, G: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, X3: tl.constexpr):
    """Per gate, the on-chip tile times the same operand: (W_0 @ x, W_1 @ x, W_2 @ x, W_3 @ x)."""
    r0 = _mm(wt[0], wt[1], x, DT, PREC, X3)
    r1 = r0
    r2 = r0
    r3 = r0
    if G > 1:
        r1 = _mm(wt[2], wt[3], x, DT, PREC, X3)
    if G > 2:
        r2 = _mm(wt[4], wt[5], x, DT, PREC, X3)
    if G > 3:
        r3 = _mm(wt[6], wt[7], x, DT, PREC, X3)
    return r0, r1, r2, r3


@triton.jit
def _stream_mm(w, gstride, srow, scol, src, sstride, offs_u, mu, offs_b, mb, K,
               G: tl.constexpr, BU: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
               DT: tl.constexpr, PREC: tl.constexpr, X3: tl.constexpr):
    """Per gate g, ``W_g[own rows, :] @ x`` [BU, BB] with the weights streamed:
    ``W_g[u, k] = w[g * gstride + u * srow + k * scol]`` and ``x[k, b] = src[b * sstride + k]``
    (read with .cg: other programs may have written it this launch), summed over K-chunks of
    ``BK``. The weight chunks are re-read every step (from L1/L2), so only [BU, BK] of one gate
    is live at a time: registers do not grow with K, and K is not padded beyond a multiple of BK.
    """
    r0 = tl.zeros([BU, BB], tl.float32)
    r1 = r0
    r2 = r0
    r3 = r0
    for kk in range(0, K, BK):
        offs_c = kk + tl.arange(0, BK)  # [BK] this chunk of K
        mc = offs_c < K
        xc = _ldx(src, offs_c[:, None] + offs_b[None, :] * sstride, mc[:, None] & mb[None, :])
        wa, va = _wload(w, offs_u, offs_c, mu, mc, srow, scol, DT, X3)  # [BU, BK]
        r0 += _mm(wa, va, xc, DT, PREC, X3)
        if G > 1:
            wa, va = _wload(w + gstride, offs_u, offs_c, mu, mc, srow, scol, DT, X3)
            r1 += _mm(wa, va, xc, DT, PREC, X3)
        if G > 2:
            wa, va = _wload(w + 2 * gstride, offs_u, offs_c, mu, mc, srow, scol, DT, X3)
            r2 += _mm(wa, va, xc, DT, PREC, X3)
        if G > 3:
            wa, va = _wload(w + 3 * gstride, offs_u, offs_c, mu, mc, srow, scol, DT, X3)
            r3 += _mm(wa, va, xc, DT, PREC, X3)
    return r0, r1, r2, r3


@triton.jit
def _rec_grad_global(wt, w, dsrc, offs_o, mo, offs_b, mb, ok, mkb, more, H, P, GH,
                     G: tl.constexpr,
                     BO: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr, STREAM: tl.constexpr,
                     DT: tl.constexpr, PREC: tl.constexpr, X3: tl.constexpr):
    """sum_g W_g^T [own outputs, :] @ dgate_g with every unit's gate gradients read from
    ``dsrc`` [B, G*H] (split layers). On-chip tiles (``wt``): one full-K gate at a time (loading
    all gates first, as ``_rec_grad`` takes them, spilled 60 B on sm_90). ``STREAM``: chunks of
    ``BK`` units, every gate per chunk in one loop (one ``_stream_mm`` per gate spilled at
    H=768), the transposed weight chunks re-read every step.
    ``more`` False (the first backward step, which has no later step) loads zeros."""
    if STREAM:
        acc = tl.zeros([BO, BB], tl.float32)
        for kk in range(0, H, BK):
            offs_c = kk + tl.arange(0, BK)  # [BK] chunk of the units
            mc = offs_c < H
            od = offs_c[:, None] + offs_b[None, :] * GH
            md = mc[:, None] & mb[None, :] & more
            for g in tl.static_range(G):
                # [BO, BK] of W_g^T
                wa, va = _wload(w + g * H * P, offs_o, offs_c, mo, mc, 1, P, DT, X3)
                acc += _mm(wa, va, _ldx(dsrc + g * H, od, md), DT, PREC, X3)
        return acc
    else:
        mkb = mkb & more
        acc = _mm(wt[0], wt[1], _ldx(dsrc, ok, mkb), DT, PREC, X3)
        for g in tl.static_range(1, G):
            acc += _mm(wt[2 * g], wt[2 * g + 1], _ldx(dsrc + g * H, ok, mkb), DT, PREC, X3)
        return acc


@triton.jit
def _rec_grad(wt, f0, f1, f2, f3, G: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
              X3: tl.constexpr):
    """sum_g W_g^T [BO, HP] @ dgate_g [HP, BB]: the part of dh_prev that goes through W_hh.

    ``wt`` is the tuple (hi0, lo0, hi1, lo1, ...) of the transposed gate tiles.
    """
    f = (f0, f1, f2, f3)
    acc = _mm(wt[0], wt[1], f0, DT, PREC, X3)
    for g in tl.static_range(1, G):
        acc += _mm(wt[2 * g], wt[2 * g + 1], f[g], DT, PREC, X3)
    return acc


@triton.jit
def _step_barrier(counter, target, SOLO: tl.constexpr, SPIN_MAX: tl.constexpr):
    """Between two steps of a persistent launch: the grid barrier, or with one program per batch
    block (``SOLO``) a CTA barrier, which orders the block's global stores before its loads."""
    if SOLO:
        tl.debug_barrier()
    else:
        _grid_barrier(counter, target, SPIN_MAX)


@triton.jit
def _ln_fwd(v0, v1, v2, v3, mask, N, G: tl.constexpr):
    """Layer-normalise each batch column of the row made of the first ``G`` [units, batch]
    tiles (``N`` valid values: the units under ``mask`` times G; biased variance, eps LN_EPS).

    Returns the normalised tiles (zero where masked; slots past G repeat gate 0's) and the
    column's 1/std [1, batch]. The program must hold every unit of its batch columns.
    """
    s = tl.sum(tl.where(mask, v0, 0.0), axis=0)
    if G > 1:
        s += tl.sum(tl.where(mask, v1, 0.0), axis=0)
    if G > 2:
        s += tl.sum(tl.where(mask, v2, 0.0), axis=0)
    if G > 3:
        s += tl.sum(tl.where(mask, v3, 0.0), axis=0)
    mean = (s / N)[None, :]
    d0 = tl.where(mask, v0 - mean, 0.0)
    q = tl.sum(d0 * d0, axis=0)
    d1 = d0
    d2 = d0
    d3 = d0
    if G > 1:
        d1 = tl.where(mask, v1 - mean, 0.0)
        q += tl.sum(d1 * d1, axis=0)
    if G > 2:
        d2 = tl.where(mask, v2 - mean, 0.0)
        q += tl.sum(d2 * d2, axis=0)
    if G > 3:
        d3 = tl.where(mask, v3 - mean, 0.0)
        q += tl.sum(d3 * d3, axis=0)
    rstd = (1.0 / tl.sqrt(q / N + _LN_EPS))[None, :]
    return d0 * rstd, d1 * rstd, d2 * rstd, d3 * rstd, rstd


@triton.jit
def _ln_bwd(g0, g1, g2, g3, y0, y1, y2, y3, rstd, mask, N, G: tl.constexpr):
    """The backward of ``_ln_fwd``: from the gradients ``g`` of the normalised tiles ``y`` (and
    the column's 1/std), the gradients of its input, rstd * (g - mean(g) - y * mean(g * y))
    with the means over the row's ``N`` valid values."""
    m1 = tl.sum(tl.where(mask, g0, 0.0), axis=0)
    m2 = tl.sum(tl.where(mask, g0 * y0, 0.0), axis=0)
    if G > 1:
        m1 += tl.sum(tl.where(mask, g1, 0.0), axis=0)
        m2 += tl.sum(tl.where(mask, g1 * y1, 0.0), axis=0)
    if G > 2:
        m1 += tl.sum(tl.where(mask, g2, 0.0), axis=0)
        m2 += tl.sum(tl.where(mask, g2 * y2, 0.0), axis=0)
    if G > 3:
        m1 += tl.sum(tl.where(mask, g3, 0.0), axis=0)
        m2 += tl.sum(tl.where(mask, g3 * y3, 0.0), axis=0)
    m1 = (m1 / N)[None, :]
    m2 = (m2 / N)[None, :]
    d0 = tl.where(mask, rstd * (g0 - m1 - y0 * m2), 0.0)
    d1 = d0
    d2 = d0
    d3 = d0
    if G > 1:
        d1 = tl.where(mask, rstd * (g1 - m1 - y1 * m2), 0.0)
    if G > 2:
        d2 = tl.where(mask, rstd * (g2 - m1 - y2 * m2), 0.0)
    if G > 3:
        d3 = tl.where(mask, rstd * (g3 - m1 - y3 * m2), 0.0)
    return d0, d1, d2, d3


@triton.jit
def _ld_row(ptr, offs_b, mb):
    """A per-row scalar ``ptr[b]`` as a [1, batch] fp32 tile."""
    return tl.load(ptr + offs_b, mask=mb, other=0.0).to(tl.float32)[None, :]
