"""Per-step state resets (``reset=``) and zoneout, on every backend that fuses them.

Resets are checked against CleanRL's per-step loop of torch.nn with ``(1 - done)`` masking
(outputs, final states, every gradient), bidirectional layers against running each segment as
its own sequence with torch.nn, and the op against the reference loop (lengths, reverse,
projection, clipping). Zoneout is checked against hand loops of torch.nn cells: the closed form
in eval, the same Bernoulli mask in training (drawn by ``zoneout_mask``). Everything in float64
on tiny shapes.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fusedrnn
from conftest import TOL
from cuda_utils import emu  # noqa: F401  (a fixture: the emulated CUDA ops)
from fusedrnn import backends
from fusedrnn.ops.cells import GATES
from fusedrnn.ops.reference import recurrence_ref

D64 = torch.float64
TOL64 = TOL[D64]
CLASSES = ("LSTM", "GRU", "RNN")
#: backends that fuse reset= and zoneout (the others raise, see test_unsupported_backends)
FUSED = [b for b in ("reference", "cpu") if b in backends.available_backends()]
CASES = ("random", "step0", "all_rows", "none")


def _done(case: str, T: int, B: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = torch.zeros(T, B, dtype=D64)
    if case == "random":
        d = (torch.rand(T, B, generator=g) < 0.3).to(D64)
        d[0, 0], d[2, 1] = 1.0, 1.0
    elif case == "step0":
        d[0] = 1.0
        d[0, -1] = 0.0
    elif case == "all_rows":
        d[T // 2] = 1.0
    return d


def _pair(cls, *args, backend="reference", zoneout=0.0, **kw):
    """(torch.nn layer, fusedrnn layer with the same weights), float64."""
    torch.manual_seed(0)
    ref = getattr(nn, cls)(*args, dtype=D64, **kw)
    ours = getattr(fusedrnn, cls)(*args, dtype=D64, backend=backend, zoneout=zoneout, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _hx(cls, L, B, H, seed=1, H_out=None):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(L, B, H_out or H, generator=g, dtype=D64)
    return (h, torch.randn(L, B, H, generator=g, dtype=D64)) if cls == "LSTM" else h


def _grads(module, x, hx, run):
    """Outputs of run(x, hx) and the gradients of a fixed random loss w.r.t. x, hx and every
    parameter."""
    x = x.detach().clone().requires_grad_()
    hs = tuple(h.detach().clone().requires_grad_() for h in (hx if isinstance(hx, tuple) else (hx,)))
    out, state = run(x, hs if len(hs) == 2 else hs[0])
    states = state if isinstance(state, tuple) else (state,)
    g = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=D64)).sum() for t in (out, *states))
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, [x, *hs, *params])
    return [out, *states, *grads]


def _close(got, want, **tol):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, msg=lambda m: f"item {i}: {m}", **(tol or TOL64))


def cleanrl_loop(lstm, x, state, done):
    """CleanRL's ``get_states``: the layer once per step, its state masked by (1 - done)."""
    outs = []
    for h, d in zip(x, done):
        k = (1.0 - d).view(1, -1, 1)
        state = tuple(k * s for s in state) if isinstance(state, tuple) else k * state
        h, state = lstm(h.unsqueeze(0), state)
        outs.append(h)
    return torch.cat(outs), state


# ---- resets against CleanRL's loop ------------------------------------------------------------

@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("cls", CLASSES)
def test_reset_matches_cleanrl_loop(cls, case, backend):
    T, B, I, H, L = 6, 3, 4, 5, 2
    ref, ours = _pair(cls, I, H, num_layers=L, backend=backend)
    x = torch.randn(T, B, I, dtype=D64)
    hx = _hx(cls, L, B, H)
    done = _done(case, T, B)
    want = _grads(ref, x, hx, lambda x, h: cleanrl_loop(ref, x, h, done))
    got = _grads(ours, x, hx, lambda x, h: ours(x, h, reset=done))
    _close(got, want)


@pytest.mark.parametrize("backend", FUSED)
def test_reset_lstm_projection(backend):
    T, B, I, H, P = 5, 3, 4, 6, 3
    ref, ours = _pair("LSTM", I, H, proj_size=P, backend=backend)
    x = torch.randn(T, B, I, dtype=D64)
    hx = _hx("LSTM", 1, B, H, H_out=P)
    done = _done("random", T, B)
    want = _grads(ref, x, hx, lambda x, h: cleanrl_loop(ref, x, h, done))
    got = _grads(ours, x, hx, lambda x, h: ours(x, h, reset=done))
    _close(got, want)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("cls", CLASSES)
def test_no_reset_equals_plain_call(cls, backend):
    """Bitwise on the fused loop (a reset only swaps the pointer to the previous state). The
    reference's ``h * (1 - reset)`` is exact too, but it moves h0's rows to a fresh buffer, and
    BLAS rounds a GEMM differently by the operand's alignment (up to 1 ulp): there the check is
    the float64 tolerance."""
    T, B, I, H = 5, 3, 4, 5
    _, ours = _pair(cls, I, H, num_layers=2, bidirectional=True, backend=backend)
    x = torch.randn(T, B, I, dtype=D64)
    hx = _hx(cls, 4, B, H)
    plain = _grads(ours, x, hx, lambda x, h: ours(x, h))
    for reset in (torch.zeros(T, B, dtype=torch.bool), torch.zeros(T, B, dtype=D64)):
        got = _grads(ours, x, hx, lambda x, h: ours(x, h, reset=reset))
        if backend == "reference":
            _close(got, plain)
        else:
            for a, b in zip(got, plain):
                assert torch.equal(a, b)


def segments_loop(ref, x, hx, done):
    """Each row's segments (split where done) run as separate sequences by torch.nn: the
    forward direction starts from hx only in the first segment (unless done[0]), the reverse
    direction from hx only in the last one; h_n is the forward state after the last segment
    and the reverse state after step 0."""
    T, B = done.shape
    L = ref.num_layers
    D = 2 if ref.bidirectional else 1
    lstm = isinstance(hx, tuple)
    hs = hx if lstm else (hx,)
    outs, finals = [], []
    for b in range(B):
        starts = [0] + [t for t in range(1, T) if done[t, b]] + [T]
        ys, fin = [], [None] * len(hs)
        for k in range(len(starts) - 1):
            s, e = starts[k], starts[k + 1]
            first, last = k == 0 and not done[0, b], k == len(starts) - 2
            init = []
            for h in hs:
                h = h[:, b:b + 1].clone()
                for layer in range(L):
                    if not first:
                        h[layer * D] = 0
                    if D == 2 and not last:
                        h[layer * D + 1] = 0
                init.append(h)
            y, st = ref(x[s:e, b:b + 1], tuple(init) if lstm else init[0])
            st = st if lstm else (st,)
            ys.append(y)
            for i, v in enumerate(st):
                if fin[i] is None:  # the first segment: the reverse direction ends here
                    fin[i] = v.clone()
                fwd = [layer * D for layer in range(L)]
                fin[i] = fin[i].index_copy(0, torch.tensor(fwd), v[fwd])
        outs.append(torch.cat(ys))
        finals.append(fin)
    out = torch.cat(outs, 1)
    state = tuple(torch.cat([f[i] for f in finals], 1) for i in range(len(hs)))
    return out, state if lstm else state[0]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("case", ("random", "step0"))
@pytest.mark.parametrize("cls", CLASSES)
def test_reset_bidirectional_matches_segments(cls, case, backend):
    T, B, I, H, L = 6, 3, 3, 4, 2
    ref, ours = _pair(cls, I, H, num_layers=L, bidirectional=True, backend=backend)
    x = torch.randn(T, B, I, dtype=D64)
    hx = _hx(cls, 2 * L, B, H)
    done = _done(case, T, B, seed=3)
    want = _grads(ref, x, hx, lambda x, h: segments_loop(ref, x, h, done))
    got = _grads(ours, x, hx, lambda x, h: ours(x, h, reset=done))
    _close(got, want)


def test_segments_loop_is_cleanrl_for_one_direction():
    """The segment oracle agrees with CleanRL's loop where both apply (anchors the oracle)."""
    ref, _ = _pair("LSTM", 3, 4, num_layers=2)
    x = torch.randn(6, 3, 3, dtype=D64)
    hx = _hx("LSTM", 2, 3, 4)
    done = _done("random", 6, 3, seed=3)
    _close(segments_loop(ref, x, hx, done)[0:1], cleanrl_loop(ref, x, hx, done)[0:1])


@pytest.mark.parametrize("backend", FUSED)
def test_reset_batch_first_and_unbatched(backend):
    T, B, I, H = 5, 2, 3, 4
    ref, ours = _pair("GRU", I, H, backend=backend)
    ours.batch_first = True
    x = torch.randn(B, T, I, dtype=D64)
    done = _done("random", T, B)
    want, _ = cleanrl_loop(ref, x.transpose(0, 1), torch.zeros(1, B, H, dtype=D64), done)
    got, _ = ours(x, reset=done.t().bool())
    torch.testing.assert_close(got, want.transpose(0, 1), **TOL64)
    _, ours1 = _pair("GRU", I, H, backend=backend)
    got1, h1 = ours1(x[0].clone(), reset=done[:, 0])
    torch.testing.assert_close(got1, want[:, 0], **TOL64)
    assert h1.shape == (1, H)


def test_reset_errors():
    m = fusedrnn.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match="reset must have shape"):
        m(x, reset=torch.zeros(2, 5))
    with pytest.raises(TypeError, match="reset must be a tensor"):
        m(x, reset=[0, 1])
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3]))
    with pytest.raises(ValueError, match="reset= is not supported with a PackedSequence"):
        m(packed, reset=torch.zeros(5, 2))
    with pytest.raises(ValueError, match="reset must have dtype"):
        recurrence_ref("GRU", torch.randn(2, 1, 6), torch.randn(6, 2), None, torch.zeros(1, 2),
                       reset=torch.zeros(2, 1, dtype=torch.bool))


# ---- the op: every fused backend against the reference -----------------------------------------

def _op_inputs(mode, T, B, H, P=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    G, Ho = GATES[mode], P or H
    r = lambda *s, k=0.5: torch.randn(*s, generator=g, dtype=D64) * k  # noqa: E731
    return dict(xw=r(T, B, G * H), w_hh=r(G * H, Ho, k=Ho ** -0.5), b_hh=r(G * H, k=0.3),
                h0=r(B, Ho), c0=r(B, H) if mode == "LSTM" else None,
                w_hr=r(Ho, H, k=H ** -0.5) if P else None)


def _zo_mask(mode, T, B, H, P=0, p=0.4, train=True, seed=5):
    Z = (P or H) + (H if mode == "LSTM" else 0)
    g = torch.Generator().manual_seed(seed)
    if train:
        return (torch.rand(T, B, Z, generator=g) < p).to(D64)
    return torch.full((T, B, Z), p, dtype=D64)


def _op_run(backend, mode, ins, lengths, reverse, dtype=D64, **kw):
    """Outputs and input gradients of the op under a fixed random loss; ``backend`` is a name
    or the op itself (a backend's ``recurrence``)."""
    fn = backend if callable(backend) else \
        lambda *a, **k: backends.recurrence(*a, backend=backend, **k)
    leaves = {k: None if v is None else v.to(dtype).requires_grad_() for k, v in ins.items()}
    kw = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    y, h, c = fn(mode, leaves["xw"], leaves["w_hh"], leaves["b_hh"], leaves["h0"],
                 leaves["c0"], lengths, reverse, leaves["w_hr"], **kw)
    g = torch.Generator().manual_seed(9)
    outs = [t for t in (y, h, c) if t is not None]
    loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=D64)).sum() for t in outs)
    wanted = [v for v in leaves.values() if v is not None]
    return [t.double() for t in outs + list(torch.autograd.grad(loss, wanted))]


OP_CASES = [  # mode, P, lengths, reverse, reset, zoneout ("train" | "eval" | None), clip
    ("LSTM", 0, None, False, True, None, None),
    ("LSTM", 0, [5, 2, 4], True, True, None, None),
    ("LSTM", 3, [5, 2, 4], False, True, "train", None),
    ("LSTM", 3, None, True, True, "eval", None),
    ("LSTM", 0, [3, 5, 1], True, True, "train", None),
    ("LSTM", 0, None, False, False, "eval", 0.05),
    ("GRU", 0, [5, 2, 4], False, True, "train", None),
    ("GRU", 0, [4, 5, 2], True, True, "eval", None),
    ("GRU", 0, None, False, True, None, 0.05),
    ("RNN_TANH", 0, None, True, True, "train", None),
    ("RNN_TANH", 0, [5, 2, 4], False, False, "eval", None),
    ("RNN_RELU", 0, [2, 5, 4], True, True, "train", None),
]


def _op_case(mode, P, lens, reset, zo, clip, T=5, B=3, H=4):
    """(inputs, lengths, keywords) of one OP_CASES row."""
    ins = _op_inputs(mode, T, B, H, P)
    lengths = None if lens is None else torch.tensor(lens)
    kw = {}
    if reset:
        done = _done("random", T, B, seed=2)
        done[4, 1] = 1.0  # a reset at a padded step changes nothing
        kw["reset"] = done
    if zo:
        kw["zoneout"] = _zo_mask(mode, T, B, H, P, train=zo == "train")
    if clip:
        kw["recurrent_grad_clip"] = clip
    return ins, lengths, kw


@pytest.mark.parametrize("backend", [b for b in FUSED if b != "reference"])
@pytest.mark.parametrize("mode,P,lens,reverse,reset,zo,clip", OP_CASES)
def test_op_matches_reference(backend, mode, P, lens, reverse, reset, zo, clip):
    ins, lengths, kw = _op_case(mode, P, lens, reset, zo, clip)
    want = _op_run("reference", mode, ins, lengths, reverse, **kw)
    got = _op_run(backend, mode, ins, lengths, reverse, **kw)
    _close(got, want)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("mode", ("LSTM", "GRU", "RNN_TANH"))
def test_gradcheck(backend, mode):
    T, B, H = 3, 2, 2
    ins = _op_inputs(mode, T, B, H)
    reset = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]], dtype=D64)
    zo = _zo_mask(mode, T, B, H, p=0.5)
    keys = [k for k, v in ins.items() if v is not None]

    def f(*ts):
        a = dict.fromkeys(("c0", "w_hr")) | dict(zip(keys, ts))
        out = backends.recurrence(mode, a["xw"], a["w_hh"], a["b_hh"], a["h0"], a["c0"], None,
                                  True, a["w_hr"], backend=backend, reset=reset, zoneout=zo)
        return tuple(o for o in out if o is not None)

    args = [ins[k].clone().requires_grad_() for k in keys]
    assert torch.autograd.gradcheck(f, args)


# ---- the CUDA backend's loops, on the host emulation of its kernels (tests/cuda_emu) ------------

#: more cases for the emulated CUDA loop: unsorted lengths with an empty row and one past T,
#: resets with clipping and zoneout together, reverse projection with zoneout
CUDA_CASES = OP_CASES + [
    ("GRU", 0, [5, 0, 3], False, True, "train", 0.05),
    ("LSTM", 0, [0, 6, 3], True, True, "train", 0.05),
    ("LSTM", 3, [2, 5, 4], True, True, "train", None),
    ("RNN_TANH", 0, [3, 0, 5], False, True, "eval", 0.05),
    ("RNN_RELU", 0, None, False, True, "eval", None),
]


@pytest.mark.parametrize("dtype", (D64, torch.float32), ids=str)
@pytest.mark.parametrize("mode,P,lens,reverse,reset,zo,clip", CUDA_CASES)
def test_cuda_emulated_matches_reference(emu, nan_poison, mode, P, lens, reverse, reset, zo,
                                         clip, dtype):
    """The CUDA backend's time loops and kernel bodies (host emulation) against the float64
    reference: outputs, final states and every input gradient."""
    ins, lengths, kw = _op_case(mode, P, lens, reset, zo, clip)
    want = _op_run("reference", mode, ins, lengths, reverse, **kw)
    got = _op_run(_cuda_emu_op, mode, ins, lengths, reverse, dtype=dtype, **kw)
    _close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("mode,P", (("LSTM", 3), ("GRU", 0), ("RNN_TANH", 0)))
def test_cuda_emulated_16bit(emu, mode, P, dtype):
    """16-bit storage (float32 arithmetic) with resets and zoneout: the reference on the same
    rounded inputs, at the dtype's tolerance."""
    T, B, H = 5, 3, 4
    ins = {k: None if v is None else v.to(dtype).double() for k, v in
           _op_inputs(mode, T, B, H, P).items()}
    kw = dict(reset=_done("random", T, B, seed=2), zoneout=_zo_mask(mode, T, B, H, P))
    want = _op_run("reference", mode, ins, torch.tensor([5, 2, 4]), True, **kw)
    got = _op_run(_cuda_emu_op, mode, ins, torch.tensor([5, 2, 4]), True, dtype=dtype, **kw)
    _close(got, want, **TOL[dtype])


@pytest.mark.parametrize("mode", ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"))
def test_cuda_emulated_gradcheck(emu, mode):
    T, B, H = 3, 2, 2
    ins = _op_inputs(mode, T, B, H, P=1 if mode == "LSTM" else 0)
    reset = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=D64)
    zo = _zo_mask(mode, T, B, H, P=1 if mode == "LSTM" else 0, p=0.5)
    keys = [k for k, v in ins.items() if v is not None]
    for reverse in (False, True):
        def f(*ts):
            a = dict.fromkeys(("c0", "w_hr")) | dict(zip(keys, ts))
            out = _cuda_emu_op(mode, a["xw"], a["w_hh"], a["b_hh"], a["h0"], a["c0"],
                               torch.tensor([3, 2]), reverse, a["w_hr"], reset=reset,
                               zoneout=zo)
            return tuple(o for o in out if o is not None)

        args = [ins[k].clone().requires_grad_() for k in keys]
        assert torch.autograd.gradcheck(f, args)


def test_cuda_emulated_opcheck(emu):
    from cuda_utils import EMU
    from fusedrnn.ops import cuda as cuda_backend

    cuda_backend.register(EMU)
    for mode, P in (("LSTM", 2), ("GRU", 0)):
        ins = {k: None if v is None else v.float() for k, v in _op_inputs(mode, 3, 2, 4, P).items()}
        reset = _done("random", 3, 2).float()
        zo = _zo_mask(mode, 3, 2, 4, P).float()
        args = (mode, ins["xw"].requires_grad_(), ins["w_hh"].requires_grad_(), ins["b_hh"],
                ins["h0"], ins["c0"], torch.tensor([3, 1]), True, ins["w_hr"], 0.0, reset, zo)
        torch.library.opcheck(emu.cuda_recurrence_fwd.default, args)


def test_cuda_emulated_checks_reset_and_zoneout(emu):
    ins = {k: None if v is None else v.float() for k, v in _op_inputs("LSTM", 3, 2, 4).items()}
    args = ("LSTM", ins["xw"], ins["w_hh"], ins["b_hh"], ins["h0"], ins["c0"], None, False,
            None, 0.0)
    with pytest.raises(RuntimeError, match="reset must have shape"):
        emu.cuda_recurrence_fwd(*args, torch.zeros(2, 3), None)
    with pytest.raises(RuntimeError, match="zoneout must have shape"):
        emu.cuda_recurrence_fwd(*args, None, torch.zeros(3, 2, 4))
    with pytest.raises(RuntimeError, match="zoneout must have dtype"):
        emu.cuda_recurrence_fwd(*args, None, torch.zeros(3, 2, 8, dtype=D64))


def _cuda_emu_op(*args, **kw):
    from cuda_utils import EMU
    from fusedrnn.ops import cuda as cuda_backend

    return cuda_backend._recurrence(EMU, *args[:9], kw.pop("recurrent_grad_clip", None), **kw)


def _triton():
    """The Triton backend where it runs here (the interpreter on CPU tensors), else None."""
    try:
        from fusedrnn.ops import triton as tri
    except ImportError:
        return None
    if tri.unavailable() is not None or not tri.supports(torch.device("cpu")):
        return None
    return tri


TRITON_CASES = [  # mode, P, lengths, reverse, tile_units (16: the split path, H=20)
    ("LSTM", 0, None, False, None),
    ("LSTM", 0, [4, 2, 3], True, None),
    ("LSTM", 3, [4, 2, 3], False, None),
    ("GRU", 0, [4, 2, 3], False, None),
    ("GRU", 0, None, True, None),
    ("RNN_TANH", 0, [2, 4, 3], True, None),
    ("LSTM", 0, [4, 2, 3], False, 16),
    ("GRU", 0, None, True, 16),
]


@pytest.mark.skipif(_triton() is None, reason="the Triton backend cannot run here")
@pytest.mark.parametrize("mode,P,lens,reverse,tile", TRITON_CASES)
def test_triton_reset_matches_reference(mode, P, lens, reverse, tile):
    """The Triton kernels (interpreter, float32) with resets against the float64 reference."""
    tri = _triton()
    T, B, H = 4, 3, 20 if tile else 5
    ins = _op_inputs(mode, T, B, H, P)
    lengths = None if lens is None else torch.tensor(lens)
    done = _done("random", T, B, seed=2)
    done[3, 1] = 1.0  # at a padded step: changes nothing
    want = _op_run("reference", mode, ins, lengths, reverse, reset=done)
    fn = lambda *a, **k: tri.recurrence(*a, tile_units=tile, **k)  # noqa: E731
    got = _op_run(fn, mode, ins, lengths, reverse, dtype=torch.float32, reset=done)
    _close(got, want, **TOL[torch.float32])


TRITON_ZO_CASES = [  # mode, P, lengths, reverse, tile_units, reset, zoneout, clip
    ("LSTM", 0, None, False, None, False, "train", None),
    ("LSTM", 0, [4, 2, 3], True, None, True, "train", 0.05),
    ("LSTM", 3, [4, 2, 3], False, None, True, "train", None),
    ("LSTM", 3, None, True, None, False, "eval", None),
    ("GRU", 0, [4, 2, 3], False, None, True, "train", None),
    ("GRU", 0, None, True, None, False, "eval", 0.05),
    ("RNN_TANH", 0, [2, 4, 3], True, None, True, "train", None),
    ("RNN_RELU", 0, None, False, None, True, "eval", None),
    ("LSTM", 0, [4, 2, 3], False, 16, True, "train", None),
    ("GRU", 0, None, True, 16, True, "train", None),
]


@pytest.mark.skipif(_triton() is None, reason="the Triton backend cannot run here")
@pytest.mark.parametrize("mode,P,lens,reverse,tile,reset,zo,clip", TRITON_ZO_CASES)
def test_triton_zoneout_matches_reference(mode, P, lens, reverse, tile, reset, zo, clip):
    """The Triton kernels (interpreter, float32) with zoneout (and resets, clipping) against the
    float64 reference: outputs, final states and every input gradient."""
    tri = _triton()
    T, B, H = 4, 3, 20 if tile else 5
    ins = _op_inputs(mode, T, B, H, P)
    lengths = None if lens is None else torch.tensor(lens)
    kw = dict(zoneout=_zo_mask(mode, T, B, H, P, train=zo == "train"))
    if reset:
        done = _done("random", T, B, seed=2)
        done[3, 1] = 1.0  # at a padded step: changes nothing
        kw["reset"] = done
    if clip:
        kw["recurrent_grad_clip"] = clip
    want = _op_run("reference", mode, ins, lengths, reverse, **kw)
    fn = lambda *a, **k: tri.recurrence(*a, tile_units=tile, **k)  # noqa: E731
    got = _op_run(fn, mode, ins, lengths, reverse, dtype=torch.float32, **kw)
    _close(got, want, **TOL[torch.float32])


@pytest.mark.skipif(_triton() is None, reason="the Triton backend cannot run here")
def test_triton_layer_reset_matches_cleanrl_loop():
    T, B, I, H = 4, 3, 3, 4
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, num_layers=2, dtype=D64)
    ours = fusedrnn.LSTM(I, H, num_layers=2, backend="triton")
    ours.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = torch.randn(T, B, I, dtype=D64)
    hx = _hx("LSTM", 2, B, H)
    done = _done("random", T, B)
    want = _grads(ref, x, hx, lambda x, h: cleanrl_loop(ref, x, h, done))
    got = _grads(ours, x.float(), tuple(h.float() for h in hx),
                 lambda x, h: ours(x, h, reset=done))
    _close([t.double() for t in got], want, **TOL[torch.float32])


@pytest.mark.skipif(_triton() is None, reason="the Triton backend cannot run here")
def test_triton_opcheck_with_reset_and_zoneout():
    ins = {k: None if v is None else v.float() for k, v in _op_inputs("LSTM", 3, 2, 4).items()}
    reset = _done("random", 3, 2).float()
    zo = _zo_mask("LSTM", 3, 2, 4).float()
    args = ("LSTM", ins["xw"], ins["w_hh"], ins["b_hh"], ins["h0"], ins["c0"], torch.tensor([3, 2]),
            True, None, True, 0.0, 0, reset, zo)
    torch.library.opcheck(torch.ops.fusedrnn.triton_recurrence_fwd.default, args)
    y, h, c, saved = torch.ops.fusedrnn.triton_recurrence_fwd(*args)
    bwd = ("LSTM", torch.randn_like(y), torch.randn_like(h), torch.randn_like(c), saved,
           ins["w_hh"], torch.tensor([3, 2]), True, None, torch.float32, 0.0, 0, reset, zo)
    torch.library.opcheck(torch.ops.fusedrnn.triton_recurrence_bwd.default, bwd)


# ---- zoneout against loops of torch.nn cells ----------------------------------------------------

def _cell(cls, layer):
    """torch.nn's cell on the layer's own parameters (layer 0), so gradients reach them."""
    cell = getattr(nn, cls + "Cell")(layer.input_size, layer.hidden_size, dtype=D64)
    params = {k[:-3]: v for k, v in layer.named_parameters() if k.endswith("_l0")}
    return lambda *a: torch.func.functional_call(cell, params, a)


def zoneout_loop(cls, layer, x, masks):
    """A one-layer zoneout layer by hand: a torch.nn cell per step, each state mixed as
    m * old + (1 - m) * new with masks [T, B, Z] (the eval case passes p everywhere)."""
    cell = _cell(cls, layer)
    H = layer.hidden_size
    T, B = x.shape[:2]
    h = x.new_zeros(B, H)
    c = x.new_zeros(B, H)
    ys = []
    for t in range(T):
        m = masks[t]
        if cls == "LSTM":
            h_new, c_new = cell(x[t], (h, c))
            c = m[:, H:] * c + (1 - m[:, H:]) * c_new
        else:
            h_new = cell(x[t], h)
        h = m[:, :H] * h + (1 - m[:, :H]) * h_new
        ys.append(h)
    return torch.stack(ys), h, c


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("cls", CLASSES)
def test_zoneout_eval_is_the_expectation(cls, backend):
    T, B, I, H = 6, 3, 4, 5
    zo = (0.3, 0.6) if cls == "LSTM" else 0.3
    _, ours = _pair(cls, I, H, zoneout=zo, backend=backend)
    ours.eval()
    x = torch.randn(T, B, I, dtype=D64)
    p_h, p_c = (zo if isinstance(zo, tuple) else (zo, 0.0))
    masks = torch.cat([torch.full((T, B, H), p_h, dtype=D64),
                       torch.full((T, B, H if cls == "LSTM" else 0), p_c, dtype=D64)], 2)
    y, h, c = zoneout_loop(cls, ours, x, masks)
    got_y, got_state = ours(x)
    torch.testing.assert_close(got_y, y, **TOL64)
    if cls == "LSTM":
        torch.testing.assert_close(got_state[1][0], c, **TOL64)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("cls", CLASSES)
def test_zoneout_train_matches_hand_loop_with_the_same_mask(cls, backend):
    T, B, I, H = 6, 3, 4, 5
    _, ours = _pair(cls, I, H, zoneout=0.4, backend=backend)
    x = torch.randn(T, B, I, dtype=D64, requires_grad=True)
    torch.manual_seed(123)
    masks = ours.zoneout_mask(T, B)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    torch.manual_seed(123)
    got_y, got_state = ours(x)
    y, h, c = zoneout_loop(cls, ours, x, masks[0])
    torch.testing.assert_close(got_y, y, **TOL64)
    g = torch.randn_like(y)
    want = torch.autograd.grad((y * g).sum(), [x, *ours.parameters()])
    got = torch.autograd.grad((got_y * g).sum(), [x, *ours.parameters()])
    _close(got, want)
    torch.manual_seed(123)  # the same seed gives the same call
    torch.testing.assert_close(ours(x)[0], got_y, rtol=0, atol=0)


@pytest.mark.parametrize("backend", FUSED)
def test_zoneout_multilayer_bidirectional_with_reset(backend):
    """Every layer and direction gets its own slice of the mask; the op is checked per layer
    against the reference loop given that slice."""
    T, B, I, H = 5, 2, 3, 4
    _, ours = _pair("LSTM", I, H, num_layers=2, bidirectional=True, zoneout=(0.3, 0.5),
                    backend=backend)
    x = torch.randn(T, B, I, dtype=D64)
    done = _done("random", T, B)
    torch.manual_seed(4)
    masks = ours.zoneout_mask(T, B)
    assert masks.shape == (4, T, B, 2 * H)
    torch.manual_seed(4)
    got, (h_n, c_n) = ours(x, reset=done)
    inp = x
    for layer in range(2):
        outs = []
        for d in range(2):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w = lambda n: getattr(ours, n + sfx)  # noqa: E731
            xw = inp @ w("weight_ih").t() + w("bias_ih")
            y, h, c = recurrence_ref("LSTM", xw, w("weight_hh"), w("bias_hh"),
                                     x.new_zeros(B, H), x.new_zeros(B, H), None, d == 1,
                                     reset=done, zoneout=masks[layer * 2 + d])
            torch.testing.assert_close(h_n[layer * 2 + d], h, **TOL64)
            torch.testing.assert_close(c_n[layer * 2 + d], c, **TOL64)
            outs.append(y)
        inp = torch.cat(outs, 2)
    torch.testing.assert_close(got, inp, **TOL64)


@pytest.mark.skipif(_triton() is None, reason="the Triton backend cannot run here")
@pytest.mark.parametrize("cls", ("LSTM", "GRU"))
def test_triton_layer_zoneout_matches_hand_loop(cls):
    """The drop-in layer on the Triton backend (interpreter, float32), training with zoneout:
    the float64 hand loop of torch.nn cells with the same mask, outputs and gradients."""
    T, B, I, H = 5, 3, 4, 5
    _, ref = _pair(cls, I, H, zoneout=0.4)  # float64: its parameters drive the hand loop
    ours = getattr(fusedrnn, cls)(I, H, zoneout=0.4, backend="triton")
    ours.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = torch.randn(T, B, I, dtype=D64, requires_grad=True)
    torch.manual_seed(11)
    masks = ours.zoneout_mask(T, B)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    torch.manual_seed(11)
    xf = x.detach().float().requires_grad_()
    got_y, _ = ours(xf)
    y, _, _ = zoneout_loop(cls, ref, x, masks[0].double())
    torch.testing.assert_close(got_y.double(), y, **TOL[torch.float32])
    g = torch.randn_like(y)
    want = torch.autograd.grad((y * g).sum(), [x, *ref.parameters()])
    got = torch.autograd.grad((got_y * g.float()).sum(), [xf, *ours.parameters()])
    _close([t.double() for t in got], want, **TOL[torch.float32])


@pytest.mark.parametrize("p", (0.1, 0.5, 0.9))
def test_zoneout_keep_rate(p):
    m = fusedrnn.LSTM(3, 16, zoneout=(p, 1 - p), num_layers=2)
    masks = m.zoneout_mask(50, 8)
    for part, q in ((masks[..., :16], p), (masks[..., 16:], 1 - p)):
        n = part.numel()
        sigma = math.sqrt(q * (1 - q) / n)
        assert abs(part.mean().item() - q) < 3 * sigma


@pytest.mark.skipif("cpu" not in fusedrnn.available_backends(), reason="no CPU extension")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_keep_mask_op(dtype):
    """fusedrnn::keep_mask (csrc/cpu/bernoulli.cpp): each lane's keep rate within 3 sigma of its
    p, a function of the seed alone (same bits on 1 and 2 threads, other seeds other masks),
    0/1 values, opcheck; and the layers draw it from torch's generator (manual_seed repeats)."""
    p = torch.tensor([0.0, 0.05, 0.5, 0.9, 1.0], dtype=dtype)
    shape = (3, 4001, 5)
    seed = torch.tensor(12345)
    masks = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            masks.append(torch.ops.fusedrnn.keep_mask(list(shape), p, seed))
    finally:
        torch.set_num_threads(old)
    m = masks[0]
    assert m.dtype == dtype and m.shape == shape and torch.equal(m, masks[1])
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    for z, q in enumerate(p.tolist()):
        lane = m[..., z]
        sigma = math.sqrt(q * (1 - q) / lane.numel())
        assert abs(lane.mean().item() - q) <= 3 * sigma
    other = torch.ops.fusedrnn.keep_mask(list(shape), p, torch.tensor(12346))
    assert not torch.equal(other, m)
    torch.library.opcheck(torch.ops.fusedrnn.keep_mask.default, ([2, 3, 5], p, seed))
    layer = fusedrnn.LSTM(3, 16, zoneout=(0.3, 0.6), dtype=dtype)
    torch.manual_seed(5)
    a = layer.zoneout_mask(7, 2)
    torch.manual_seed(5)
    assert torch.equal(a, layer.zoneout_mask(7, 2))
    with pytest.raises(RuntimeError, match="p must be 1-D with the last size of shape"):
        torch.ops.fusedrnn.keep_mask([2, 3], p, seed)
    with pytest.raises(RuntimeError, match="seed must be one int64"):
        torch.ops.fusedrnn.keep_mask([2, 5], p, torch.tensor([1.0]))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("cls", CLASSES)
def test_zoneout_zero_equals_plain_layer_exactly(cls, backend):
    T, B, I, H = 4, 2, 3, 4
    _, plain = _pair(cls, I, H, num_layers=2, backend=backend)
    zero = (0.0, 0.0) if cls == "LSTM" else 0.0
    _, off = _pair(cls, I, H, num_layers=2, backend=backend, zoneout=zero)
    assert off.zoneout_mask(T, B) is None
    x = torch.randn(T, B, I, dtype=D64)
    for a, b in zip(_grads(off, x, _hx(cls, 2, B, H), off), _grads(plain, x, _hx(cls, 2, B, H), plain)):
        assert torch.equal(a, b)


def test_zoneout_errors():
    for bad in (1.0, -0.1, "0.1", True):
        with pytest.raises(ValueError, match="zoneout"):
            fusedrnn.GRU(3, 4, zoneout=bad)
    with pytest.raises(ValueError, match="pair"):
        fusedrnn.LSTM(3, 4, zoneout=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="zoneout must be a float p for GRU"):
        fusedrnn.GRU(3, 4, zoneout=(0.1, 0.2))
    m = fusedrnn.LSTM(3, 4, zoneout=0.25)
    assert m.zoneout == (0.25, 0.25) and "zoneout=(0.25, 0.25)" in repr(m)
    with pytest.raises(ValueError, match="zoneout must be a mask tensor of shape"):
        recurrence_ref("GRU", torch.randn(2, 1, 6), torch.randn(6, 2), None, torch.zeros(1, 2),
                       zoneout=torch.zeros(2, 1, 3))


# ---- backends that do not fuse them, torch.compile and opcheck ----------------------------------

def test_unsupported_backends_raise_or_fall_back_visibly(monkeypatch):
    """A backend whose op lacks the keyword: NotImplementedError naming the ones that fuse it
    when chosen explicitly; with "auto", the reference's numbers and a warning."""
    import types

    calls = []
    plain = types.SimpleNamespace(
        __name__="fusedrnn.ops.plain",
        recurrence=lambda mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr: calls.append(1))
    monkeypatch.setattr(backends, "resolve", lambda name, device: plain)
    monkeypatch.setattr(backends.RECURRENCE, "_warned", set())
    ins = _op_inputs("GRU", 3, 2, 4)
    args = ("GRU", ins["xw"], ins["w_hh"], ins["b_hh"], ins["h0"])
    done = _done("random", 3, 2)
    with pytest.raises(NotImplementedError, match=r"'plain' does not implement reset; .*'cpu'"):
        backends.recurrence(*args, backend="cpu", reset=done)
    with pytest.warns(UserWarning, match="does not fuse reset="):
        got = backends.recurrence(*args, backend="auto", reset=done)
    want = recurrence_ref(*args, reset=done)
    _close(got[:2], want[:2])
    backends.recurrence(*args, backend="cpu")  # without the keyword: the backend's own op
    assert calls == [1]


def test_every_backend_fuses_reset_and_zoneout():
    """Every backend's op takes both keywords, so "auto" never falls back for them (the
    fallback rule of backends.recurrence reads the backend's signature)."""
    import importlib
    import inspect

    for name, path in backends.RECURRENCE.modules.items():
        params = inspect.signature(importlib.import_module(path).recurrence).parameters
        assert {"reset", "zoneout"} <= set(params), name


@pytest.mark.skipif("cpu" not in FUSED, reason="the C++ extension is not built")
def test_opcheck_extended_op():
    T, B, H = 3, 2, 4
    for mode, P in (("LSTM", 2), ("GRU", 0), ("RNN_TANH", 0)):
        ins = _op_inputs(mode, T, B, H, P)
        reset = _done("random", T, B)
        zo = _zo_mask(mode, T, B, H, P)
        args = (mode, ins["xw"], ins["w_hh"], ins["b_hh"], ins["h0"], ins["c0"],
                torch.tensor([3, 2]), True, ins["w_hr"], True, reset, zo)
        torch.library.opcheck(torch.ops.fusedrnn.recurrence_fwd.default, args)
        y, h, c, ws = torch.ops.fusedrnn.recurrence_fwd(*args)
        bwd = (mode, torch.randn_like(y), torch.randn_like(h),
               torch.randn_like(c) if mode == "LSTM" else None, *args[1:9], y, ws, 0.0,
               reset, zo)
        torch.library.opcheck(torch.ops.fusedrnn.recurrence_bwd.default, bwd)


@pytest.mark.skipif("cpu" not in FUSED, reason="the C++ extension is not built")
def test_torch_compile_with_reset_and_zoneout():
    T, B, I, H = 5, 2, 3, 4
    m = fusedrnn.LSTM(I, H, backend="cpu", zoneout=0.3).eval()
    x = torch.randn(T, B, I)
    done = _done("random", T, B).bool()
    want = m(x, reset=done)[0]
    got = torch.compile(m, backend="aot_eager")(x, reset=done)[0]
    torch.testing.assert_close(got, want, **TOL[torch.float32])
