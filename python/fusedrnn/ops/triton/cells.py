"""The pointwise part of each cell in Triton: the only code that differs between cells.

Tiles are laid out ``[units, batch]`` (hidden units down, batch across) because the recurrent
product is computed as ``W_tile [units, K] @ h [K, batch]``. ``MODE`` is a constexpr:
0 RNN_TANH, 1 RNN_RELU, 2 LSTM, 3 GRU, 4 LN_LSTM, 5 LN_GRU: the index in
``fusedrnn.ops.cells.CELLS`` (``MODE_ID``).

Forward takes the input-side pre-activations ``a0..a3`` (xw, ``b_ih`` included) and the recurrent
ones ``r0..r3`` (``W_hh h + b_hh``) per gate, and returns the cell output before any projection,
the new cell state and the four saved activations ``e0..e3`` the backward pass reads:

    RNN   e0 = h_new
    LSTM  e0..e3 = i, f, g, o (after their nonlinearities)
    GRU   e0..e2 = r, z, n and e3 = W_hn h + b_hn (the product the reset gate scales)

and a fifth ``e4`` with the row statistic ``rs`` [1, batch] of a cell that normalises its state
(``norm_state``, LN_LSTM: e4 = the normalised c, rs = its 1/std); the others return dummies.

The LayerNorm cells: the recurrent pre-activations ``r`` arrive already normalised, scaled and
biased by the shared loop (``norm_recurrent``: a trait, ``tiles._ln_fwd``), so LN_GRU's body is
the GRU's. LN_LSTM normalises c_new itself over the units of the tile, which holds every unit of
its batch columns (the loops only run these cells on paths where one program owns whole rows):
``p0, p1`` are its ``ln_c_weight``, ``ln_c_bias`` tiles [units, 1], ``mu`` the valid units.

Unused gate slots of RNN are passed and returned as dummies.
"""

import triton
import triton.language as tl

from .tiles import _ln_bwd, _ln_fwd


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # libdevice tanh does not run in the Triton interpreter; this identity runs everywhere
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def cell_fwd(MODE: tl.constexpr, a0, a1, a2, a3, r0, r1, r2, r3, c, h_prev, p0, p1, mu, H):
    """One forward step of the cell on [units, batch] fp32 tiles
    -> (out, c_new, e0, e1, e2, e3, e4, rs)."""
    if MODE == 0:
        h = _tanh(a0 + r0)
        return h, c, h, h, h, h, h, h
    elif MODE == 1:
        h = tl.maximum(a0 + r0, 0.0)
        return h, c, h, h, h, h, h, h
    elif MODE == 2:
        i = _sigmoid(a0 + r0)
        f = _sigmoid(a1 + r1)
        g = _tanh(a2 + r2)
        o = _sigmoid(a3 + r3)
        c_new = f * c + i * g
        return o * _tanh(c_new), c_new, i, f, g, o, o, o
    elif MODE == 4:
        i = _sigmoid(a0 + r0)
        f = _sigmoid(a1 + r1)
        g = _tanh(a2 + r2)
        o = _sigmoid(a3 + r3)
        c_new = f * c + i * g
        cn, _u1, _u2, _u3, rs = _ln_fwd(c_new, c_new, c_new, c_new, mu, H, 1)
        return o * _tanh(cn * p0 + p1), c_new, i, f, g, o, cn, rs
    else:  # GRU, LN_GRU
        r = _sigmoid(a0 + r0)
        z = _sigmoid(a1 + r1)
        n = _tanh(a2 + r * r2)
        h = (1.0 - z) * n + z * h_prev
        return h, c, r, z, n, r2, h, h


@triton.jit
def cell_bwd(MODE: tl.constexpr, dh, dc, e0, e1, e2, e3, e4, rs, c_prev, h_prev, p0, p1, mu, H):
    """One backward step on [units, batch] fp32 tiles.

    ``dh`` is the gradient of the cell output (before projection), ``dc`` of the new cell state.
    Returns (dx0..dx3, dr0..dr3, dc_prev, dh_direct, k0, k1): gradients of the input-side and of
    the recurrent pre-activations per gate (equal except GRU's n gate), of the previous cell
    state, the part of dh_prev that does not go through W_hh (GRU's z * dh, else zero), and the
    per-element gradient contributions of the cell's own parameters ``p0, p1`` (LN_LSTM's
    ln_c_weight, ln_c_bias; zeros elsewhere), which the caller sums over steps and batch.
    """
    zero = tl.zeros_like(dh)
    if MODE == 0:
        d = dh * (1.0 - e0 * e0)
        return d, d, d, d, d, d, d, d, dc, zero, zero, zero
    elif MODE == 1:
        d = tl.where(e0 > 0.0, dh, 0.0)
        return d, d, d, d, d, d, d, d, dc, zero, zero, zero
    elif MODE == 2:
        i, f, g, o = e0, e1, e2, e3
        tc = _tanh(f * c_prev + i * g)
        dct = dc + dh * o * (1.0 - tc * tc)
        di = dct * g * i * (1.0 - i)
        df = dct * c_prev * f * (1.0 - f)
        dg = dct * i * (1.0 - g * g)
        do = dh * tc * o * (1.0 - o)
        return di, df, dg, do, di, df, dg, do, dct * f, zero, zero, zero
    elif MODE == 4:
        i, f, g, o, cn = e0, e1, e2, e3, e4
        tn = _tanh(cn * p0 + p1)
        dn = dh * o * (1.0 - tn * tn)  # of n = LN(c) * ln_c_weight + ln_c_bias
        dcn, _u1, _u2, _u3 = _ln_bwd(dn * p0, dn, dn, dn, cn, cn, cn, cn, rs, mu, H, 1)
        dct = dc + dcn
        di = dct * g * i * (1.0 - i)
        df = dct * c_prev * f * (1.0 - f)
        dg = dct * i * (1.0 - g * g)
        do = dh * tn * o * (1.0 - o)
        return di, df, dg, do, di, df, dg, do, dct * f, zero, dn * cn, dn
    else:  # GRU, LN_GRU
        r, z, n, hn = e0, e1, e2, e3
        dn = dh * (1.0 - z) * (1.0 - n * n)
        dz = dh * (h_prev - n) * z * (1.0 - z)
        dr = dn * hn * r * (1.0 - r)
        return dr, dz, dn, dn, dr, dz, dn * r, dn, dc, dh * z, zero, zero
