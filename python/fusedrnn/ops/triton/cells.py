"""The pointwise part of each cell in Triton: the only code that differs between cells.

Tiles are laid out ``[units, batch]`` (hidden units down, batch across) because the recurrent
product is computed as ``W_tile [units, K] @ h [K, batch]``. ``MODE`` is a constexpr:
0 RNN_TANH, 1 RNN_RELU, 2 LSTM, 3 GRU: the index in ``fusedrnn.ops.cells.CELLS`` (``MODE_ID``).

Forward takes the input-side pre-activations ``a0..a3`` (xw, ``b_ih`` included) and the recurrent
ones ``r0..r3`` (``W_hh h + b_hh``) per gate, and returns the cell output before any projection,
the new cell state and the four saved activations ``e0..e3`` the backward pass reads:

    RNN   e0 = h_new
    LSTM  e0..e3 = i, f, g, o (after their nonlinearities)
    GRU   e0..e2 = r, z, n and e3 = W_hn h + b_hn (the product the reset gate scales)

Unused gate slots of RNN are passed and returned as dummies.
"""

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # libdevice tanh does not run in the Triton interpreter; this identity runs everywhere
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def cell_fwd(MODE: tl.constexpr, a0, a1, a2, a3, r0, r1, r2, r3, c, h_prev):
    """One forward step of the cell on [units, batch] fp32 tiles -> (out, c_new, e0, e1, e2, e3)."""
    if MODE == 0:
        h = _tanh(a0 + r0)
        return h, c, h, h, h, h
    elif MODE == 1:
        h = tl.maximum(a0 + r0, 0.0)
        return h, c, h, h, h, h
    elif MODE == 2:
        i = _sigmoid(a0 + r0)
        f = _sigmoid(a1 + r1)
        g = _tanh(a2 + r2)
        o = _sigmoid(a3 + r3)
        c_new = f * c + i * g
        return o * _tanh(c_new), c_new, i, f, g, o
    else:
        r = _sigmoid(a0 + r0)
        z = _sigmoid(a1 + r1)
        n = _tanh(a2 + r * r2)
        return (1.0 - z) * n + z * h_prev, c, r, z, n, r2


@triton.jit
def cell_bwd(MODE: tl.constexpr, dh, dc, e0, e1, e2, e3, c_prev, h_prev):
    """One backward step on [units, batch] fp32 tiles.

    ``dh`` is the gradient of the cell output (before projection), ``dc`` of the new cell state.
    Returns (dx0..dx3, dr0..dr3, dc_prev, dh_direct): gradients of the input-side and of the
    recurrent pre-activations per gate (equal except GRU's n gate), of the previous cell state,
    and the part of dh_prev that does not go through W_hh (GRU's z * dh, else zero).
    """
    zero = tl.zeros_like(dh)
    if MODE == 0:
        d = dh * (1.0 - e0 * e0)
        return d, d, d, d, d, d, d, d, dc, zero
    elif MODE == 1:
        d = tl.where(e0 > 0.0, dh, 0.0)
        return d, d, d, d, d, d, d, d, dc, zero
    elif MODE == 2:
        i, f, g, o = e0, e1, e2, e3
        tc = _tanh(f * c_prev + i * g)
        dct = dc + dh * o * (1.0 - tc * tc)
        di = dct * g * i * (1.0 - i)
        df = dct * c_prev * f * (1.0 - f)
        dg = dct * i * (1.0 - g * g)
        do = dh * tc * o * (1.0 - o)
        return di, df, dg, do, di, df, dg, do, dct * f, zero
    else:
        r, z, n, hn = e0, e1, e2, e3
        dn = dh * (1.0 - z) * (1.0 - n * n)
        dz = dh * (h_prev - n) * z * (1.0 - z)
        dr = dn * hn * r * (1.0 - r)
        return dr, dz, dn, dn, dr, dz, dn * r, dn, dc, dh * z
