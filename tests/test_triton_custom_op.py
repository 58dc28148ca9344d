"""The Triton recurrence as torch.library custom ops: opcheck, gradients, torch.compile.

``fusedrnn::triton_recurrence_fwd`` / ``triton_recurrence_bwd`` (ops/triton/autograd.py) are
checked with ``torch.library.opcheck`` (schema, fake impl, autograd registration, AOT dispatch
with dynamic shapes); their gradients against the float64 reference; and
``torch.compile(fullgraph=True)`` through ``fusedrnn.backends.recurrence(backend="triton")``,
forward and backward, with and without ``recurrent_grad_clip``. Without a GPU the kernels run in
Triton's interpreter on CPU tensors (tests/conftest.py), so shapes stay tiny.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TOL
from fusedrnn import backends
from fusedrnn.ops.cells import GATES
from fusedrnn.ops.reference import recurrence_ref
from triton_env import DEV, MODES, NAMES, tri  # skips the module without a Triton device
from fusedrnn.ops.triton import autograd as tri_ag  # noqa: E402

FWD = torch.ops.fusedrnn.triton_recurrence_fwd.default
BWD = torch.ops.fusedrnn.triton_recurrence_bwd.default
F32 = TOL[torch.float32]


def make(mode, T=3, B=2, H=5, P=None, lengths=None, seed=0, scale=0.5):
    """float64 inputs of the op contract (None where absent; c0 for LSTM) and lengths."""
    g = torch.Generator().manual_seed(seed)
    G, Ho = GATES[mode], P or H

    def r(*shape, s=scale):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * s

    ins = dict(xw=r(T, B, G * H), w_hh=r(G * H, Ho, s=Ho ** -0.5), b_hh=r(G * H, s=0.3),
               h0=r(B, Ho), c0=r(B, H) if mode == "LSTM" else None,
               w_hr=r(Ho, H, s=H ** -0.5) if P else None)
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    return ins, lens


def leaves(ins, dtype):
    """Fresh leaves requiring grad, in ``dtype`` on DEV (None where absent)."""
    return {k: None if v is None else v.to(DEV, dtype).requires_grad_() for k, v in ins.items()}


def loss_and_grads(fn, ins, seed=1):
    """Outputs and gradients of every input under a loss touching y, h_T and c_T."""
    y, h, c = fn(*(ins[k] for k in NAMES))
    g = torch.Generator().manual_seed(seed)
    loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device))
               .sum() for t in (y, h, c) if t is not None)
    present = [k for k in NAMES if ins[k] is not None]
    # T = 0: the reference never touches xw or the weights (None, read as zeros)
    grads = torch.autograd.grad(loss, [ins[k] for k in present], allow_unused=True,
                                materialize_grads=True)
    return dict(y=y, h_T=h, c_T=c) | {f"d_{k}": v for k, v in zip(present, grads)}


def assert_matches_ref(got, ref):
    assert set(got) == set(ref)
    for k, want in ref.items():
        if want is None:
            assert got[k] is None, k
            continue
        torch.testing.assert_close(got[k].cpu().double(), want, **F32, msg=lambda m: f"{k}: {m}")


def fwd_args(mode, ins, lens, reverse, save=True, clip=0.0, tile_units=0, reset=None,
             zoneout=None):
    return (mode, *(ins[k] for k in NAMES[:5]), lens, reverse, ins["w_hr"], save, clip,
            tile_units, reset, zoneout)


OP_CASES = ([(m, case) for m in MODES for case in ("plain", "len-rev")]
            + [("LSTM", "proj"), ("LSTM", "T0-proj"), ("GRU", "T0")])


def op_inputs(mode, case, lengths):
    """make() for an OP_CASES case: "proj" adds w_hr, "T0" an empty sequence, "len-rev" lengths."""
    return make(mode, T=0 if "T0" in case else 3, P=3 if "proj" in case else None,
                lengths=lengths if case == "len-rev" else None)


@pytest.mark.parametrize("mode,case", OP_CASES, ids=[f"{m}-{c}" for m, c in OP_CASES])
def test_opcheck_fwd(mode, case):
    ins, lens = op_inputs(mode, case, [3, 2])
    args = fwd_args(mode, leaves(ins, torch.float32), None if lens is None else lens.to(DEV),
                    case == "len-rev")
    torch.library.opcheck(FWD, args)


@pytest.mark.parametrize("mode,case", OP_CASES, ids=[f"{m}-{c}" for m, c in OP_CASES])
def test_opcheck_bwd(mode, case):
    ins, lens = op_inputs(mode, case, [1, 3])
    ins = {k: None if v is None else v.to(DEV, torch.float32) for k, v in ins.items()}
    lens = None if lens is None else lens.to(DEV)
    rev = case == "len-rev"
    y, h, _, saved = FWD(*fwd_args(mode, ins, lens, rev))
    g = torch.Generator().manual_seed(2)
    dy, dh = (torch.randn(t.shape, generator=g).to(DEV) for t in (y, h))
    dc = torch.randn(ins["c0"].shape, generator=g).to(DEV) if mode == "LSTM" else None
    torch.library.opcheck(BWD, (mode, dy, dh, dc, saved, ins["w_hh"], lens, rev, ins["w_hr"],
                                torch.float32, 0.0, 0, None, None))


@pytest.mark.parametrize("mode", MODES)
def test_grads_split_plan_vs_reference(nan_poison, monkeypatch, mode):
    """tile_units=16 at H=20 forces two programs per batch block; the backward recomputes the
    forward's plan from the op's arguments (nothing but tensors crosses the op boundary)."""
    plans = {}
    real_fwd, real_bwd = tri_ag.rnn_fwd, tri_ag.rnn_bwd

    def fwd(*a, **k):
        out = real_fwd(*a, **k)
        plans["fwd"] = out[3]["plan"]
        return out

    def bwd(mode, saved, *a, **k):
        plans["bwd"] = saved["plan"]
        return real_bwd(mode, saved, *a, **k)

    monkeypatch.setattr(tri_ag, "rnn_fwd", fwd)
    monkeypatch.setattr(tri_ag, "rnn_bwd", bwd)
    ins, lens = make(mode, T=3, B=3, H=20, lengths=[2, 3, 1])
    got = loss_and_grads(lambda *a: tri.recurrence(mode, *a[:5], lens.to(DEV), True, a[5],
                                                   tile_units=16), leaves(ins, torch.float32))
    ref = loss_and_grads(lambda *a: recurrence_ref(mode, *a[:5], lens, True, a[5]),
                         leaves(ins, torch.float64))
    assert plans["fwd"].n_tiles == 2 and plans["fwd"].BU == 16, plans["fwd"]
    assert plans["bwd"] == plans["fwd"]
    assert_matches_ref(got, ref)


def _compiled_vs_reference(mode, compile_backend, clip=None, P=None):
    ins, lens = make(mode, P=P, lengths=[2, 3])

    def fn(*a):
        return backends.recurrence(mode, *a[:5], lens.to(DEV), True, a[5], backend="triton",
                                   recurrent_grad_clip=clip)

    backends.resolve("triton", DEV)  # the registry's first lookup imports; later ones trace
    graphs = []

    def recording(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend(compile_backend)(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=recording)
    got = loss_and_grads(compiled, leaves(ins, torch.float32))
    eager = loss_and_grads(fn, leaves(ins, torch.float32))
    ref = loss_and_grads(lambda *a: recurrence_ref(mode, *a[:5], lens, True, a[5],
                                                   recurrent_grad_clip=clip),
                         leaves(ins, torch.float64))
    # fullgraph=True already refuses graph breaks; the op must be a node of the one graph
    assert len(graphs) == 1
    assert any("triton_recurrence_fwd" in str(n.target) for n in graphs[0].graph.nodes)
    assert_matches_ref(got, ref)
    assert_matches_ref(eager, ref)


@pytest.mark.parametrize("mode", MODES)
def test_compile_fullgraph_aot_eager(mode):
    _compiled_vs_reference(mode, "aot_eager", P=3 if mode == "LSTM" else None)


def test_compile_fullgraph_inductor_with_clip():
    """Inductor (slower to compile: one case) around the op, with recurrent_grad_clip passed
    through the op's arguments to its backward."""
    _compiled_vs_reference("LSTM", "inductor", clip=0.05)


@pytest.mark.parametrize("mode", MODES)
def test_clip_through_op_vs_reference(mode):
    """A weight scale that makes the gradients grow, so the clamp changes the result."""
    ins, lens = make(mode, T=4, B=2, H=5, lengths=[4, 2], scale=1.5)
    clip = 0.05
    got = loss_and_grads(lambda *a: tri.recurrence(mode, *a[:5], lens.to(DEV), False, a[5],
                                                   recurrent_grad_clip=clip),
                         leaves(ins, torch.float32))
    ref = loss_and_grads(lambda *a: recurrence_ref(mode, *a[:5], lens, False, a[5],
                                                   recurrent_grad_clip=clip),
                         leaves(ins, torch.float64))
    unclipped = loss_and_grads(lambda *a: recurrence_ref(mode, *a[:5], lens, False, a[5]),
                               leaves(ins, torch.float64))
    assert not torch.allclose(unclipped["d_h0"], ref["d_h0"], **F32)  # the clamp bites
    assert_matches_ref(got, ref)


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_empty_sequence(mode):
    """T = 0: the states pass through; every gradient is defined (zeros for the weights)."""
    ins, _ = make(mode, T=0, B=2, H=3, P=2 if mode == "LSTM" else None)
    got = loss_and_grads(lambda *a: tri.recurrence(mode, *a[:5], None, False, a[5]),
                         leaves(ins, torch.float32))
    ref = loss_and_grads(lambda *a: recurrence_ref(mode, *a[:5], None, False, a[5]),
                         leaves(ins, torch.float64))
    assert got["y"].shape == (0, 2, ins["h0"].shape[1])
    assert_matches_ref(got, ref)


def test_no_grad_saves_nothing_and_backward_refuses():
    ins, _ = make("LSTM")
    x = {k: None if v is None else v.to(DEV, torch.float32) for k, v in ins.items()}
    with torch.no_grad():
        y, h, c = tri.recurrence("LSTM", *(x[k] for k in NAMES))
    ref = recurrence_ref("LSTM", *(ins[k] for k in NAMES))
    for a, b in zip((y, h, c), ref):
        torch.testing.assert_close(a.cpu().double(), b, **F32)
    lv = leaves(ins, torch.float32)
    y, _, _, saved = FWD(*fwd_args("LSTM", lv, None, False, save=False))
    assert all(t.numel() == 0 for t in saved)
    with pytest.raises(RuntimeError, match="save=False"):
        y.sum().backward()


def test_double_backward_raises():
    ins, _ = make("GRU")
    lv = leaves(ins, torch.float32)
    y, _, _ = tri.recurrence("GRU", *(lv[k] for k in NAMES))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(y.sum(), lv["w_hh"], create_graph=True)
