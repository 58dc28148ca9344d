"""The fused time loops: one forward and one backward kernel shared by every cell.

Each program owns ``BB`` batch columns and ``BU`` hidden units (all ``G`` gates of them); per
step it multiplies the recurrent weights by the previous state and runs the cell's pointwise
math (``cells.py``, the only per-cell code) on ``[units, batch]`` tiles.

Where the weights live (constexpr ``STREAM``):

* ``STREAM=False``: the program loads its slice of ``w_hh`` once, before the time loop, and keeps
  it on chip for all T steps (Triton stages the dot operands in shared memory).
* ``STREAM=True``: every step re-reads the weights in K-chunks of ``BK`` (``tiles._stream_mm``),
  so only one chunk is live: registers and shared memory do not grow with H.

How the full previous state reaches every program (constexpr ``SPLIT``):

* ``SPLIT=False`` (resident): one program holds every unit, so the state never leaves registers
  and no synchronisation is needed.
* ``SPLIT=True``: the state goes through global memory every step (forward: h in a ping-pong
  buffer; backward: the gate gradients of the step just done), which is also how the streamed
  products read it chunk by chunk. ``SYNC=True`` runs all steps in one launch with a barrier
  between steps: a grid barrier over the ``tl.num_programs(1)`` programs of a batch block (all
  co-resident: the launcher keeps the grid within the SM count), or with one program per batch
  block (``SOLO``) a CTA barrier. ``SYNC=False``: one step per launch, the kernel boundary being
  the barrier.
* The LSTM projection with ``SPLIT`` exchanges twice per step (h, then the cell output m before
  ``h = W_hr m``; backward: dh before ``dm = W_hr^T dh``), so two barriers per step, and on the
  per-step path two launches per step (``PHASE`` 1 and 2).

Shapes (kernel view): xw [T, B, G*H], w [G*H, P], w_hr [P, H], states h [B, P], c [B, H];
P = H without projection. HP/PP are H/P padded to powers of two; padded lanes load zeros.

Row-wise normalisation (the LayerNorm cells, constexpr traits ``NORM`` = ``norm_recurrent`` and
``NORM_C`` = ``norm_state``): the kernels reduce over the units of their tiles, so they run such
a cell only where one program owns every unit of its batch columns (``launch.plan`` keeps
``n_tiles == 1``). ``cp`` is the cell's ``cell_params`` concatenated (fp32 or the input dtype):
with NORM its first G*H values scale the normalised ``W_hh h`` (``tiles._ln_fwd``) before
``b_hh``; the cell's own parameters follow (LN_LSTM: ln_c_weight, ln_c_bias, read by
``cells.cell_fwd``). Forward saves the normalised ``W_hh h`` (``rnorm`` [T, B, G*H]) and the
rows' 1/std (``stats`` [T, 2, B]: the recurrent one, the cell state's). Backward writes the
gradient of ``W_hh h`` before the normalisation (``dwh``, which the recurrence and d_w_hh use)
and each element's contribution to the cell_params' gradients (``dcp`` [T, B, NCP*H], summed
over T and B by the caller).
"""

import triton
import triton.language as tl

from .cells import cell_bwd, cell_fwd
from .tiles import (_gate_tiles, _gates_mm, _ld, _ld_gates, _ld_row, _ldx, _ln_bwd, _ln_fwd, _mm,
                    _offs, _rec_grad, _rec_grad_global, _st, _st_gates, _step_barrier,
                    _stream_mm, _wload)


@triton.jit
def _carry_keep(reset, bt, B, T, offs_b, mb, lens, on):
    """[1, BB] 0.0 where a segment starts at step ``bt`` of a live row (reset [T, B] nonzero,
    bt < its length), else 1.0; all 1.0 unless ``on`` or outside 0 <= bt < T."""
    inside = (bt >= 0) & (bt < T) & on
    bc = tl.minimum(tl.maximum(bt, 0), T - 1).to(tl.int64)  # in bounds: the load needs no
    r = tl.load(reset + bc * B + offs_b, mask=mb, other=0.0)[None, :]  # scalar mask
    return tl.where((r != 0.0) & (bt < lens) & inside, 0.0, 1.0)


@triton.jit
def _norm_params(cp, offs_u, mu, H, G: tl.constexpr, BU: tl.constexpr, NORM: tl.constexpr,
                 NORM_C: tl.constexpr):
    """[BU, 1] fp32 tiles of the cell_params: the G gains of the normalised W_hh h (NORM; else
    ones), then the cell's own two (NORM_C; else zeros)."""
    z = tl.zeros([BU, 1], tl.float32)
    lw0 = z + 1.0
    lw1 = lw0
    lw2 = lw0
    lw3 = lw0
    p0 = z
    p1 = z
    own = 0
    if NORM:
        lw0 = tl.load(cp + offs_u, mask=mu, other=0.0).to(tl.float32)[:, None]
        if G > 1:
            lw1 = tl.load(cp + H + offs_u, mask=mu, other=0.0).to(tl.float32)[:, None]
        if G > 2:
            lw2 = tl.load(cp + 2 * H + offs_u, mask=mu, other=0.0).to(tl.float32)[:, None]
        if G > 3:
            lw3 = tl.load(cp + 3 * H + offs_u, mask=mu, other=0.0).to(tl.float32)[:, None]
        own = G * H
    if NORM_C:
        p0 = tl.load(cp + own + offs_u, mask=mu, other=0.0).to(tl.float32)[:, None]
        p1 = tl.load(cp + own + H + offs_u, mask=mu, other=0.0).to(tl.float32)[:, None]
    return lw0, lw1, lw2, lw3, p0, p1


@triton.jit
def rnn_fwd_kernel(
    xw, w, b, w_hr, h0, c_in, lengths, reset, zoh, zoc, cp,  # inputs (c_in may alias c_out);
    # reset [T, B]; zoneout's keep-old mask: h part zoh [T, B, P], c part zoc [T, B, H] (apart,
    # so that their tiles share the offsets of h and c: a stride of their own costs registers)
    y, h_out, c_out,  # y [T, B, P] in the input dtype; h_out [B, P], c_out [B, H] fp32
    act, hprev, cprev,  # saved for backward, fp32: [T, B, NA*H], [T, B, P], [T, B, H]
    rnorm, stats,  # NORM, saved: normalised W_hh h [T, B, G*H], row 1/std [T, 2, B] fp32
    hbuf, mbuf, counter,  # SPLIT: h ping-pong [2, B, P] fp32; projected split: cell output
    # [B, H] fp32; SYNC: barrier counters [n_bblocks] i32 (SPIN: polls before giving up)
    T, B, H, P, s0, s_end,  # runs steps s0 .. s_end-1 of the sequence
    MODE: tl.constexpr, G: tl.constexpr, NA: tl.constexpr,
    HP: tl.constexpr, PP: tl.constexpr, BU: tl.constexpr, BO: tl.constexpr, BB: tl.constexpr,
    SPLIT: tl.constexpr, SYNC: tl.constexpr, SOLO: tl.constexpr, STREAM: tl.constexpr,
    BK: tl.constexpr, PHASE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PROJ: tl.constexpr,
    HAS_LEN: tl.constexpr, HAS_C: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr,
    DOT_T: tl.constexpr, PREC: tl.constexpr, X3: tl.constexpr, SPIN: tl.constexpr,
    HAS_RESET: tl.constexpr, HAS_ZO: tl.constexpr, NORM: tl.constexpr, NORM_C: tl.constexpr,
):
    # A projected split layer exchanges twice per step: h (all programs' outputs) before the
    # gates, the cell output m before the projection h = W_hr m. PHASE 1 / 2 run only the first
    # / second half of a step (per-step launches, where the kernel boundary is the barrier).
    pid_b = tl.program_id(0)
    pid_u = tl.program_id(1)
    GH = G * H
    PSPLIT: tl.constexpr = HAS_PROJ and SPLIT
    NBAR: tl.constexpr = 2 if PSPLIT else 1  # barriers per step
    offs_b = pid_b * BB + tl.arange(0, BB)  # [BB] batch columns
    mb = offs_b < B
    offs_u = pid_u * BU + tl.arange(0, BU)  # [BU] own cell units
    mu = offs_u < H
    offs_o = pid_u * BO + tl.arange(0, BO)  # [BO] own output units (== own cell units unless proj)
    mo = offs_o < P
    offs_k = tl.arange(0, PP)  # [PP] the whole previous state, K of the recurrent product
    mk = offs_k < P

    if STREAM:
        wt = (0,)  # the weights are re-read in K-chunks every step (_stream_mm)
    else:
        # the recurrent weights, loaded once and kept on chip for all T steps: gate g, own
        # units, all K: G tiles [BU, PP] (hi, lo)
        wt = _gate_tiles(w, offs_u, offs_k, mu, mk, H * P, P, 1, G, DOT_T, X3)
    b0 = tl.zeros([BU, 1], tl.float32)
    b1 = b0
    b2 = b0
    b3 = b0
    if HAS_BIAS:
        b0 = tl.load(b + 0 * H + offs_u, mask=mu, other=0.0).to(tl.float32)[:, None]  # [BU, 1]
        if G > 1:
            b1 = tl.load(b + 1 * H + offs_u, mask=mu, other=0.0).to(tl.float32)[:, None]
        if G > 2:
            b2 = tl.load(b + 2 * H + offs_u, mask=mu, other=0.0).to(tl.float32)[:, None]
        if G > 3:
            b3 = tl.load(b + 3 * H + offs_u, mask=mu, other=0.0).to(tl.float32)[:, None]
    lw0, lw1, lw2, lw3, p0, p1 = _norm_params(cp, offs_u, mu, H, G, BU, NORM, NORM_C)
    if HAS_PROJ and not STREAM:
        offs_hk = tl.arange(0, HP)
        whr, vhr = _wload(w_hr, offs_o, offs_hk, mo, offs_hk < H, H, 1, DOT_T, X3)  # [PP, HP]

    ox, mx = _offs(offs_u, offs_b, mu, mb, GH)  # [BU, BB] tiles of xw
    oa, _ = _offs(offs_u, offs_b, mu, mb, NA * H)  # saved activations
    oc, _ = _offs(offs_u, offs_b, mu, mb, H)  # cell state
    oh, mh = _offs(offs_o, offs_b, mo, mb, P)  # [BO, BB] own part of h
    ok, mkb = _offs(offs_k, offs_b, mk, mb, P)  # [PP, BB] all of h
    if SPLIT:
        h = tl.zeros([BO, BB], tl.float32)  # read from hbuf every step
    else:
        h = _ld(h0, oh, mh)  # [BO, BB]
    c = tl.zeros([BU, BB], tl.float32)
    if HAS_C:
        c = _ld(c_in, oc, mx)  # [BU, BB]
    if HAS_LEN:
        lens = tl.load(lengths + offs_b, mask=mb, other=0)[None, :]  # [1, BB]
    else:
        lens = tl.where(mb, T, 0)[None, :]

    for s in range(s0, s_end):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        t = t.to(tl.int64)
        live = t < lens  # [1, BB]
        if SPLIT:
            if SYNC:
                if s > 0:
                    _step_barrier(counter + pid_b, s * NBAR * tl.num_programs(1), SOLO, SPIN)
            cur = hbuf + (s % 2) * B * P
            h_own = _ldx(cur, oh, mh)  # [BO, BB]
        else:
            h_own = h
        keep = tl.full([1, BB], 1.0, tl.float32)
        if HAS_RESET:  # a segment boundary: the carried state restarts from zeros
            if REVERSE:  # the state passes from step t + 1 down to t
                bt = t + 1
            else:
                bt = t
            keep = _carry_keep(reset, bt, B, T, offs_b, mb, lens, bt >= 0)
            h_own = h_own * keep  # (and the recurrent products below, column by column)
            c = c * keep
        if PHASE != 2:  # the gates and the cell
            if STREAM:
                # xw_t is loaded before the chunk loop so its HBM latency hides under it
                a0, a1, a2, a3 = _ld_gates(xw + t * B * GH, ox, mx, H, G)  # [BU, BB] each
                r0, r1, r2, r3 = _stream_mm(w, H * P, P, 1, cur, P, offs_u, mu, offs_b, mb, P, G,
                                            BU, BB, BK, DOT_T, PREC, X3)
            else:
                if SPLIT:
                    r0, r1, r2, r3 = _gates_mm(wt, _ldx(cur, ok, mkb), G, DOT_T, PREC, X3)
                else:
                    r0, r1, r2, r3 = _gates_mm(wt, h, G, DOT_T, PREC, X3)  # [BU, BB] each
                a0, a1, a2, a3 = _ld_gates(xw + t * B * GH, ox, mx, H, G)
            if HAS_RESET:  # W (h * keep) = (W h) * keep for a per-column 0/1 keep
                r0 = r0 * keep
                r1 = r1 * keep
                r2 = r2 * keep
                r3 = r3 * keep
            if NORM:  # LN over the whole G*H row of W_hh h, then its gain (this program owns it)
                r0, r1, r2, r3, rs = _ln_fwd(r0, r1, r2, r3, mu[:, None], GH, G)
                if SAVE:
                    _st_gates(rnorm + t * B * GH, ox, mx, H, G, (r0, r1, r2, r3))
                    _st(stats + t * 2 * B, offs_b[None, :], mb[None, :], rs)
                r0 = r0 * lw0
                r1 = r1 * lw1
                r2 = r2 * lw2
                r3 = r3 * lw3
            r0 += b0
            r1 += b1  # (unused gate slots are dead code)
            r2 += b2
            r3 += b3
            out, c_new, e0, e1, e2, e3, e4, rsc = cell_fwd(MODE, a0, a1, a2, a3, r0, r1, r2, r3,
                                                           c, h_own, p0, p1, mu[:, None], H)
            if SAVE:
                _st_gates(act + t * B * (NA * H), oa, mx, H, NA, (e0, e1, e2, e3, e4))
                if NORM_C:
                    _st(stats + t * 2 * B + B, offs_b[None, :], mb[None, :], rsc)
                if HAS_C:
                    _st(cprev + t * B * H, oc, mx, c)
            if HAS_ZO and HAS_C:  # zoneout: the carried c keeps its old value with weight m
                mz = _ld(zoc + t * B * H, oc, mx)  # [BU, BB]
                c_new = mz * c + (1.0 - mz) * c_new
            c = tl.where(live, c_new, c)
            if PSPLIT:
                _st(mbuf, oc, mx, out)  # [BU, BB] own units of m, for every program's projection
        if PSPLIT:
            if SYNC:
                _step_barrier(counter + pid_b, (s * NBAR + 1) * tl.num_programs(1), SOLO, SPIN)
        if PHASE != 1:  # the output (projected) and the state exchange
            if PSPLIT:
                h_new = _stream_mm(w_hr, 0, H, 1, mbuf, H, offs_o, mo, offs_b, mb, H, 1, BO, BB, BK,
                                   DOT_T, PREC, X3)[0]  # [BO, BB]
            elif HAS_PROJ:
                h_new = _mm(whr, vhr, out, DOT_T, PREC, X3)  # [PP, BB]
            else:
                h_new = out
            if HAS_ZO:  # zoneout: the carried h keeps its old value with weight m
                mz = _ld(zoh + t * B * P, oh, mh)  # [BO, BB]
                h_new = mz * h_own + (1.0 - mz) * h_new
            if SAVE:
                _st(hprev + t * B * P, oh, mh, h_own)
            h = tl.where(live, h_new, h_own)
            _st(y + t * B * P, oh, mh, tl.where(live, h_new, 0.0))
            if SPLIT:
                _st(hbuf + ((s + 1) % 2) * B * P, oh, mh, h)
    if PHASE != 1:
        _st(h_out, oh, mh, h)
    if HAS_C:
        if PHASE != 2:
            _st(c_out, oc, mx, c)


@triton.jit
def rnn_bwd_kernel(
    w, w_hr, dy, act, hprev, cprev, lengths, reset, zoh, zoc,  # dy [T, B, P]; saved,
    # reset [T, B] and zoneout's masks zoh [T, B, P], zoc [T, B, H] as in the forward
    cp, rnorm, stats,  # NORM: cell_params, saved normalised W_hh h and row 1/std (forward's)
    dxw, drec, dhtot,  # fp32 out: [T, B, G*H] grads of xw and (GRU only) of W_hh h + b_hh; [T, B, P]
    dwh, dcp,  # NORM, fp32 out: grad of W_hh h before LN [T, B, G*H]; cp's terms [T, B, NCP*H]
    r_state, dc_state, dh0, dc0,  # fp32: carried dh part and dc [B, P], [B, H]; results [B, P], [B, H]
    counter,  # SPLIT+SYNC only: barrier counters [n_bblocks] i32 (SPIN: polls before giving up)
    T, B, H, P, s0, s_end,  # runs backward steps s0 .. s_end-1; step T only finishes dh0
    clip,  # recurrent_grad_clip (used when CLIP)
    MODE: tl.constexpr, G: tl.constexpr, NA: tl.constexpr, REC: tl.constexpr,
    DIRECT: tl.constexpr,  # the cell's traits (launch.bwd_traits)
    HP: tl.constexpr, PP: tl.constexpr, BU: tl.constexpr, BO: tl.constexpr, BB: tl.constexpr,
    SPLIT: tl.constexpr, SYNC: tl.constexpr, SOLO: tl.constexpr, STREAM: tl.constexpr,
    BK: tl.constexpr, PHASE: tl.constexpr, HAS_PROJ: tl.constexpr, HAS_LEN: tl.constexpr,
    HAS_C: tl.constexpr, REVERSE: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr,
    X3: tl.constexpr, CLIP: tl.constexpr, SPIN: tl.constexpr, HAS_RESET: tl.constexpr,
    HAS_ZO: tl.constexpr, NORM: tl.constexpr, NORM_C: tl.constexpr, NCP: tl.constexpr,
):
    # Backward step s handles forward time t. dh_t = W_hh^T drec_next + R, where drec_next was
    # written by step s-1 (by every program, hence the exchange in SPLIT mode) and R is this
    # program's own remainder (dy, GRU's z * dh, or the pass-through of a finished sequence).
    # A projected split layer also exchanges dh_t (through dhtot) before dm = W_hr^T dh_t;
    # PHASE 1 / 2 run only the part before / after that exchange (per-step launches).
    pid_b = tl.program_id(0)
    pid_u = tl.program_id(1)
    GH = G * H
    PSPLIT: tl.constexpr = HAS_PROJ and SPLIT
    NBAR: tl.constexpr = 2 if PSPLIT else 1  # barriers per step
    offs_b = pid_b * BB + tl.arange(0, BB)  # [BB]
    mb = offs_b < B
    offs_u = pid_u * BU + tl.arange(0, BU)  # [BU] own cell units
    mu = offs_u < H
    offs_o = pid_u * BO + tl.arange(0, BO)  # [BO] own output units
    mo = offs_o < P
    offs_k = tl.arange(0, HP)  # [HP] every cell unit, K of the transposed product
    mk = offs_k < H

    if STREAM:
        wt = (0,)  # re-read in chunks every step (_rec_grad_global, _stream_mm)
    else:
        # W_g^T restricted to own output units: G tiles [BO, HP], loaded once
        wt = _gate_tiles(w, offs_o, offs_k, mo, mk, H * P, 1, P, G, DOT_T, X3)
    if HAS_PROJ and not STREAM:
        offs_p = tl.arange(0, PP)
        whrt, vhrt = _wload(w_hr, offs_k, offs_p, mk, offs_p < P, 1, H, DOT_T, X3)  # [HP, PP]

    ox, mx = _offs(offs_u, offs_b, mu, mb, GH)  # [BU, BB] own gate tiles
    oa, _ = _offs(offs_u, offs_b, mu, mb, NA * H)  # saved activations
    oc, _ = _offs(offs_u, offs_b, mu, mb, H)  # cell state
    oh, mh = _offs(offs_o, offs_b, mo, mb, P)  # [BO, BB] own part of dh
    ok, mkb = _offs(offs_k, offs_b, mk, mb, GH)  # [HP, BB] every unit's gate grads
    lw0, lw1, lw2, lw3, p0, p1 = _norm_params(cp, offs_u, mu, H, G, BU, NORM, NORM_C)
    if NORM:
        ocp, _ = _offs(offs_u, offs_b, mu, mb, NCP * H)  # cell_params' gradient terms
    R = _ld(r_state, oh, mh)  # [BO, BB]
    dc = tl.zeros([BU, BB], tl.float32)
    if HAS_C:
        dc = _ld(dc_state, oc, mx)  # [BU, BB]
    d0 = tl.zeros([BU, BB], tl.float32)  # resident mode: last step's recurrent gate grads
    d1 = d0
    d2 = d0
    d3 = d0
    if HAS_LEN:
        lens = tl.load(lengths + offs_b, mask=mb, other=0)[None, :]  # [1, BB]
    else:
        lens = tl.where(mb, T, 0)[None, :]
    dsrc = dxw
    if REC:
        dsrc = drec
    if NORM:  # the recurrence goes through the normalisation: its input's gradient
        dsrc = dwh

    # Step T has no forward step left: it only completes dh0 = W_hh^T drec_first + R. It runs
    # the same body with every lane dead and its stores masked, so no weight tile is used after
    # the loop (which would keep the tiles live in registers across it).
    for s in range(s0, s_end):
        if REVERSE:
            t = s
            tn = t - 1
        else:
            t = T - 1 - s
            tn = t + 1
        valid = (tl.zeros([1, BB], tl.int32) + s) < T  # [1, BB] all true except at step T
        cut = tl.zeros([1, BB], tl.int32) != 0
        if HAS_RESET:
            # a reset at the boundary between t and tn (step max(t, tn) of the sequence, both
            # directions) stopped what step tn sends back to h_t (the first step has no tn)
            cut = (_carry_keep(reset, tl.maximum(t, tn), B, T, offs_b, mb, lens, s > 0) == 0.0)
        t = tl.minimum(tl.maximum(t, 0), T - 1).to(tl.int64)
        sx = mx & valid  # store masks of this step
        sh = mh & valid
        live = (t < lens) & valid  # [1, BB]
        if SPLIT:
            if SYNC:
                if s > 0:
                    _step_barrier(counter + pid_b, s * NBAR * tl.num_programs(1), SOLO, SPIN)
        if PHASE != 2:  # dh_t: the recurrence's share plus dy_t
            if SPLIT:
                # the first step has no later step: the masked load gives zeros
                dh = R + _rec_grad_global(wt, w, dsrc + tn.to(tl.int64) * B * GH, offs_o, mo,
                                          offs_b, mb, ok, mkb, s > 0, H, P, GH, G, BO, BB, BK,
                                          STREAM, DOT_T, PREC, X3)  # [BO, BB]
            else:
                dh = R + _rec_grad(wt, d0, d1, d2, d3, G, DOT_T, PREC, X3)  # [BO, BB]
            if CLIP:
                # what the previous (later-in-time) step sent back to h_t through the recurrence
                # is clamped when that step was live; a finished sequence's pass-through is not
                sent = (tn < lens) & (s > 0)  # [1, BB]
                dh = tl.where(sent, tl.minimum(tl.maximum(dh, -clip), clip), dh)
            if HAS_RESET:
                dh = tl.where(cut, 0.0, dh)
            dh_tot = dh + tl.where(live, _ld(dy + t * B * P, oh, mh), 0.0)  # [BO, BB] grad of h_t
            dh_cell = dh_tot
            if HAS_ZO:  # zoneout: the mask's kept share goes straight to h_{t-1}, the rest
                mz = _ld(zoh + t * B * P, oh, mh)  # [BO, BB]              into the cell
                dh_keep = mz * dh_tot  # [BO, BB]
                dh_cell = (1.0 - mz) * dh_tot
            if HAS_PROJ:
                _st(dhtot + t * B * P, oh, sh, tl.where(live, dh_cell, 0.0))
            if not DIRECT:
                if HAS_ZO:
                    R = tl.where(live, dh_keep, dh_tot)
                else:
                    R = tl.where(live, 0.0, dh_tot)  # only a finished sequence passes dh on
        if PSPLIT:
            if SYNC:
                _step_barrier(counter + pid_b, (s * NBAR + 1) * tl.num_programs(1), SOLO, SPIN)
        if PHASE != 1:  # the cell's backward on own units
            if PSPLIT:
                dm = _stream_mm(w_hr, 0, 1, H, dhtot + t * B * P, P, offs_u, mu, offs_b, mb, P, 1,
                                BU, BB, BK, DOT_T, PREC, X3)[0]  # [BU, BB]
            elif HAS_PROJ:
                dm = _mm(whrt, vhrt, dh_cell, DOT_T, PREC, X3)  # [HP, BB]
            else:
                dm = dh_cell
            e0, e1, e2, e3 = _ld_gates(act + t * B * (NA * H), oa, mx, H, NA)  # [BU, BB] each
            e4 = e0
            if NA > 4:
                e4 = _ld(act + t * B * (NA * H) + 4 * H, oa, mx)
            rsc = tl.zeros([1, BB], tl.float32)
            if NORM_C:
                rsc = _ld_row(stats + t * 2 * B + B, offs_b, mb)
            if HAS_RESET:
                dc = tl.where(cut, 0.0, dc)
            dc_cell = dc
            if HAS_ZO and HAS_C:  # zoneout: the mask's share of dc goes into the cell, the rest
                dc_cell = (1.0 - _ld(zoc + t * B * H, oc, mx)) * dc
            cpv = dc
            if HAS_C:
                cpv = _ld(cprev + t * B * H, oc, mx)
            hp = dm
            if DIRECT:
                hp = _ld(hprev + t * B * P, oh, mh)
            x0, x1, x2, x3, q0, q1, q2, q3, dcp_, dhd, k0, k1 = cell_bwd(
                MODE, dm, dc_cell, e0, e1, e2, e3, e4, rsc, cpv, hp, p0, p1, mu[:, None], H)
            if HAS_ZO and HAS_C:  # ... straight to c_{t-1} (the mask is re-read: a tile kept
                # live across the cell's backward spills on sm_90)
                dcp_ += _ld(zoc + t * B * H, oc, mx) * dc
            # gate g's gradients, each stored as soon as it is made (slots past G stay
            # loop-invariant zeros)
            xt = dxw + t * B * GH
            d0 = tl.where(live, q0, 0.0)
            _st(xt + 0 * H, ox, sx, tl.where(live, x0, 0.0))
            if G > 1:
                d1 = tl.where(live, q1, 0.0)
                _st(xt + 1 * H, ox, sx, tl.where(live, x1, 0.0))
            if G > 2:
                d2 = tl.where(live, q2, 0.0)
                _st(xt + 2 * H, ox, sx, tl.where(live, x2, 0.0))
            if G > 3:
                d3 = tl.where(live, q3, 0.0)
                _st(xt + 3 * H, ox, sx, tl.where(live, x3, 0.0))
            if REC:
                _st_gates(drec + t * B * GH, ox, sx, H, G, (d0, d1, d2, d3))
            if NORM:  # through hh = LN(W_hh h) * gain + b_hh: q is the gradient of hh
                y0, y1, y2, y3 = _ld_gates(rnorm + t * B * GH, ox, mx, H, G)
                ct = dcp + t * B * (NCP * H)
                _st_gates(ct, ocp, sx, H, G, (tl.where(live, q0 * y0, 0.0),
                                              tl.where(live, q1 * y1, 0.0),
                                              tl.where(live, q2 * y2, 0.0),
                                              tl.where(live, q3 * y3, 0.0)))
                if NORM_C:
                    _st(ct + G * H, ocp, sx, tl.where(live, k0, 0.0))
                    _st(ct + (G + 1) * H, ocp, sx, tl.where(live, k1, 0.0))
                n0, n1, n2, n3 = _ln_bwd(q0 * lw0, q1 * lw1, q2 * lw2, q3 * lw3, y0, y1, y2, y3,
                                         _ld_row(stats + t * 2 * B, offs_b, mb), mu[:, None], GH, G)
                d0 = tl.where(live, n0, 0.0)
                d1 = tl.where(live, n1, 0.0)
                d2 = tl.where(live, n2, 0.0)
                d3 = tl.where(live, n3, 0.0)
                _st_gates(dwh + t * B * GH, ox, sx, H, G, (d0, d1, d2, d3))
            if DIRECT:
                if HAS_ZO:
                    dhd += dh_keep
                R = tl.where(live, dhd, dh_tot)
            if CLIP:
                dcp_ = tl.minimum(tl.maximum(dcp_, -clip), clip)
            dc = tl.where(live, dcp_, dc)

    if s_end > T:
        _st(dh0, oh, mh, R)
        if HAS_C:
            _st(dc0, oc, mx, dc)
    _st(r_state, oh, mh, R)
    if HAS_C:
        _st(dc_state, oc, mx, dc)
