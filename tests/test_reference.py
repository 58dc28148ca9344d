"""The reference op on its own: lengths and reverse semantics, gradients, dtypes.

Its anchoring to torch.nn is tests/test_nn_parity.py (layers with backend="reference"); here the
contract's own promises are checked against independent constructions (one sequence at a time,
flipped sequences, torch.nn cells).
"""

import pytest
import torch

from conftest import TOL
from fusedrnn.ops import GATES, recurrence_ref
from fusedrnn.ops.cells import TORCH_MODES

MODES = list(TORCH_MODES)  # the LN cells: test_layernorm_cells.py


def _args(mode, T, B, H, proj=None, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = GATES[mode]
    H_out = proj or H
    r = lambda *s: torch.randn(*s, dtype=dtype, generator=g) * 0.5  # noqa: E731
    xw, w_hh, b_hh, h0 = r(T, B, G * H), r(G * H, H_out), r(G * H), r(B, H_out)
    c0 = r(B, H) if mode == "LSTM" else None
    w_hr = r(H_out, H) if proj else None
    return xw, w_hh, b_hh, h0, c0, w_hr


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_lengths_equal_running_each_sequence_alone(mode, reverse):
    T, B, H = 7, 4, 5
    xw, w_hh, b_hh, h0, c0, w_hr = _args(mode, T, B, H, proj=3 if mode == "LSTM" else None)
    lengths = torch.tensor([7, 3, 1, 5])
    y, h, c = recurrence_ref(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr)
    for b in range(B):
        n = int(lengths[b])
        cb = None if c0 is None else c0[b : b + 1]
        yb, hb, cb = recurrence_ref(mode, xw[:n, b : b + 1], w_hh, b_hh, h0[b : b + 1], cb,
                                    None, reverse, w_hr)
        torch.testing.assert_close(y[:n, b], yb[:, 0], **TOL[torch.float64])
        assert torch.all(y[n:, b] == 0)
        torch.testing.assert_close(h[b], hb[0], **TOL[torch.float64])
        if c is not None:
            torch.testing.assert_close(c[b], cb[0], **TOL[torch.float64])


@pytest.mark.parametrize("mode", MODES)
def test_reverse_equals_flipped_forward(mode):
    xw, w_hh, b_hh, h0, c0, w_hr = _args(mode, 6, 3, 4)
    y, h, c = recurrence_ref(mode, xw, w_hh, b_hh, h0, c0, None, True, w_hr)
    yf, hf, cf = recurrence_ref(mode, xw.flip(0), w_hh, b_hh, h0, c0, None, False, w_hr)
    torch.testing.assert_close(y, yf.flip(0), **TOL[torch.float64])
    torch.testing.assert_close(h, hf, **TOL[torch.float64])


@pytest.mark.parametrize("mode", MODES)
def test_single_step_matches_torch_cell(mode):
    """One step equals torch.nn's own cell with the input projection split off."""
    B, I, H = 3, 4, 5
    torch.manual_seed(0)
    cls = {"RNN_TANH": torch.nn.RNNCell, "RNN_RELU": torch.nn.RNNCell,
           "LSTM": torch.nn.LSTMCell, "GRU": torch.nn.GRUCell}[mode]
    kw = {"nonlinearity": "relu"} if mode == "RNN_RELU" else {}
    cell = cls(I, H, dtype=torch.float64, **kw)
    x, h0 = torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    c0 = torch.randn(B, H, dtype=torch.float64) if mode == "LSTM" else None
    xw = torch.nn.functional.linear(x, cell.weight_ih, cell.bias_ih)[None]
    _, h, c = recurrence_ref(mode, xw, cell.weight_hh, cell.bias_hh, h0, c0)
    want = cell(x, (h0, c0)) if mode == "LSTM" else (cell(x, h0), None)
    torch.testing.assert_close(h, want[0], **TOL[torch.float64])
    if c is not None:
        torch.testing.assert_close(c, want[1], **TOL[torch.float64])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lengths", [None, [3, 1, 2]], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradcheck(mode, lengths, reverse):
    proj = 2 if mode == "LSTM" else None
    args = [a.requires_grad_() if a is not None else None
            for a in _args(mode, 3, 3, 3, proj=proj)]
    xw, w_hh, b_hh, h0, c0, w_hr = args
    lens = None if lengths is None else torch.tensor(lengths)

    def f(xw, w_hh, b_hh, h0, c0, w_hr):
        y, h, c = recurrence_ref(mode, xw, w_hh, b_hh, h0, c0, lens, reverse, w_hr)
        return (y, h) if c is None else (y, h, c)

    assert torch.autograd.gradcheck(f, (xw, w_hh, b_hh, h0, c0, w_hr))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("mode", MODES)
def test_low_precision_computes_in_fp32(mode, dtype):
    args = _args(mode, 5, 2, 4, dtype=dtype)
    y, h, c = recurrence_ref(mode, *args[:5], None, False, args[5])
    assert y.dtype == h.dtype == dtype
    up = [None if a is None else a.float() for a in args]
    y32, h32, _ = recurrence_ref(mode, *up[:5], None, False, up[5])
    # only the final rounding to the low-precision dtype may differ
    torch.testing.assert_close(y, y32.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(h, h32.to(dtype), rtol=0, atol=0)


def test_zero_length_sequence_keeps_h0():
    xw, w_hh, b_hh, h0, c0, _ = _args("LSTM", 4, 2, 3)
    y, h, c = recurrence_ref("LSTM", xw, w_hh, b_hh, h0, c0, torch.tensor([4, 0]))
    assert torch.equal(h[1], h0[1]) and torch.equal(c[1], c0[1])
    assert torch.all(y[:, 1] == 0)
