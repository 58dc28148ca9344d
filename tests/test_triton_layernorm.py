"""The LayerNorm cells (LN_LSTM, LN_GRU) on the Triton backend against float64 equations.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1), so shapes stay tiny. The op is compared with the float64 reference
(``recurrence_ref``: the equations of ``fusedrnn.ops.cells``), and the layers with the plain
per-step loop of tests/test_layernorm_cells.py (written independently of the package): outputs,
final states and every gradient by name, the cell_params' included. Both paths that run these
cells are covered: resident, and the streamed one-program-per-batch-block path (the fallback
for layers whose weights do not fit on chip); a split of a row over programs is refused.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from conftest import TOL
from fusedrnn import backends
from fusedrnn.ops.cells import CELLS, GATES
from fusedrnn.ops.reference import recurrence_ref
from test_layernorm_cells import _randomise, plain_layers
from triton_env import DEV, tri  # skips the module without a Triton device
from fusedrnn.ops.triton import launch  # noqa: E402

F32 = TOL[torch.float32]
LN_MODES = ("LN_LSTM", "LN_GRU")


def make(mode, T, B, H, bias=True, c0=True, seed=0):
    """float64 op inputs by name (None where absent) and the cell_params list."""
    g = torch.Generator().manual_seed(seed)
    G = GATES[mode]

    def r(*shape, scale=0.5):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    ins = dict(xw=r(T, B, G * H), w_hh=r(G * H, H, scale=H ** -0.5),
               b_hh=r(G * H, scale=0.3) if bias else None, h0=r(B, H),
               c0=r(B, H) if CELLS[mode].has_cell_state and c0 else None)
    # gains away from 1 and a nonzero shift, so that their effects and gradients are tested
    cp = [(1 + r(k * H, scale=0.3)) if "weight" in name else r(k * H, scale=0.3)
          for name, k in CELLS[mode].cell_params]
    return ins, cp


def run(fn, mode, ins, cp, dtype, device, lengths=None, reverse=False, seed=1, **kw):
    """Outputs and the gradients of every input (by name) under a loss touching y, h_T, c_T."""
    leaves = {k: None if v is None else v.detach().clone().to(device, dtype).requires_grad_()
              for k, v in ins.items()}
    cpl = [p.detach().clone().to(device, dtype).requires_grad_() for p in cp]
    lens = None if lengths is None else torch.tensor(lengths, device=device)
    y, h, c = fn(mode, *leaves.values(), lens, reverse, None, cell_params=cpl, **kw)
    g = torch.Generator().manual_seed(seed)
    outs = dict(y=y, h_T=h, c_T=c)
    loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64)
                .to(t.device)).sum() for t in outs.values() if t is not None)
    loss.backward()
    outs.update({f"d_{k}": v.grad for k, v in leaves.items() if v is not None})
    outs.update({f"d_{name}": p.grad for (name, _), p in zip(CELLS[mode].cell_params, cpl)})
    return outs


def check(mode, ins, cp, lengths=None, reverse=False, **kw):
    """Triton in fp32 against the float64 reference on the same values."""
    ref_kw = {k: v for k, v in kw.items() if k != "tile_units"}
    want = run(recurrence_ref, mode, ins, cp, torch.float64, "cpu", lengths, reverse, **ref_kw)
    dev_kw = {k: v.to(DEV) if torch.is_tensor(v) else v for k, v in kw.items()}
    got = run(tri.recurrence, mode, ins, cp, torch.float32, DEV, lengths, reverse, **dev_kw)
    assert set(got) == set(want)
    for k, w in want.items():
        if w is None:
            assert got[k] is None, k
            continue
        assert got[k] is not None, k
        torch.testing.assert_close(got[k].cpu().double(), w, **F32, msg=lambda m: f"{k}: {m}")
    assert all(f"d_{n}" in got for n, _ in CELLS[mode].cell_params)


CASES = {
    "T4B3H5": dict(T=4, B=3, H=5),
    "T5B3H7-len-unsorted-rev": dict(T=5, B=3, H=7, lengths=[2, 5, 3], reverse=True),
    "T3B2H6-nobias-noc0": dict(T=3, B=2, H=6, bias=False, c0=False),
    "T1B1H3": dict(T=1, B=1, H=3),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("mode", LN_MODES)
def test_op_matches_reference(nan_poison, mode, case):
    kw = dict(CASES[case])
    lengths, reverse = kw.pop("lengths", None), kw.pop("reverse", False)
    pl = launch.layer_plan(mode, kw["H"], kw["H"], kw["B"], torch.float32, False, DEV)
    assert pl.path == "resident" and pl.n_tiles == 1, pl
    ins, cp = make(mode, **kw)
    check(mode, ins, cp, lengths, reverse)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", LN_MODES)
def test_op_streamed_one_program(nan_poison, mode, reverse):
    """tile_units=HP: the streamed path with one program per batch block holding every unit
    (what a layer too large for on-chip weights runs); H=20 pads to 32, so padded units and
    several K-chunks are exercised, and the state goes through global memory every step."""
    pl = launch.layer_plan(mode, 20, 20, 3, torch.float32, False, DEV, 32)
    assert (pl.path, pl.n_tiles, pl.BU, pl.stream) == ("stream", 1, 32, True), pl
    ins, cp = make(mode, T=3, B=3, H=20)
    check(mode, ins, cp, [3, 1, 2], reverse, tile_units=32)


@pytest.mark.parametrize("carry", ["reset", "zoneout", "reset+zoneout", "clip"])
@pytest.mark.parametrize("mode", LN_MODES)
def test_op_reset_zoneout_clip(nan_poison, mode, carry):
    T, B, H = 5, 3, 5
    g = torch.Generator().manual_seed(5)
    ins, cp = make(mode, T, B, H, seed=3)
    kw = {}
    if "reset" in carry:
        kw["reset"] = torch.zeros(T, B, dtype=torch.float64)
        kw["reset"][0, 0] = kw["reset"][2, 0] = kw["reset"][3, 1] = kw["reset"][1, 2] = 1.0
    if "zoneout" in carry:
        Z = 2 * H if CELLS[mode].has_cell_state else H
        kw["zoneout"] = torch.bernoulli(torch.full((T, B, Z), 0.4, dtype=torch.float64),
                                        generator=g)
    if carry == "clip":
        kw["recurrent_grad_clip"] = 0.05
    for reverse in (False, True):
        lengths = [5, 3, 4] if reverse else None
        ref_kw = {k: (v.to(torch.float64) if torch.is_tensor(v) else v) for k, v in kw.items()}
        want = run(recurrence_ref, mode, ins, cp, torch.float64, "cpu", lengths, reverse,
                   **ref_kw)
        dev_kw = {k: (v.to(DEV, torch.float32) if torch.is_tensor(v) else v)
                  for k, v in kw.items()}
        got = run(tri.recurrence, mode, ins, cp, torch.float32, DEV, lengths, reverse,
                  **dev_kw)
        for k, w in want.items():
            if w is not None:
                torch.testing.assert_close(got[k].cpu().double(), w, **F32,
                                           msg=lambda m: f"{carry} rev={reverse} {k}: {m}")
    if carry != "clip":  # the option changes the result (the test can fail)
        plain = run(recurrence_ref, mode, ins, cp, torch.float64, "cpu")
        assert not torch.allclose(plain["y"], want["y"])


@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU"])
def test_layer_matches_plain_equations(cls):
    """2 layers, bidirectional, packed unsorted lengths, hx given: the drop-in layer on
    backend="triton" (fp32) against the independent float64 loop, every gradient by name."""
    torch.manual_seed(0)
    lstm = cls == "LayerNormLSTM"
    I, H, L, T = 3, 5, 2, 4
    lengths = torch.tensor([3, 4, 1])
    B = len(lengths)
    m = getattr(fusedrnn, cls)(I, H, num_layers=L, bidirectional=True, backend="triton",
                               device=DEV)
    _randomise(m)
    x = torch.randn(T, B, I, requires_grad=True)
    h0 = torch.randn(2 * L, B, H, requires_grad=True)
    c0 = torch.randn(2 * L, B, H, requires_grad=True)
    hx = (h0.to(DEV), c0.to(DEV)) if lstm else h0.to(DEV)
    out, hid = m(pack_padded_sequence(x.to(DEV), lengths, enforce_sorted=False), hx)
    y, _ = pad_packed_sequence(out, total_length=T)
    h_n, c_n = hid if lstm else (hid, None)

    params = dict(m.named_parameters())
    p64 = {k: v.detach().double().cpu().requires_grad_() for k, v in params.items()}
    x64, h64, c64 = (t.detach().double().requires_grad_() for t in (x, h0, c0))
    ry, rh, rc = plain_layers(p64, lstm, x64, lengths, h64, c64, L, 2)
    torch.testing.assert_close(y.cpu().double(), ry, **F32)
    torch.testing.assert_close(h_n.cpu().double(), rh, **F32)
    if lstm:
        torch.testing.assert_close(c_n.cpu().double(), rc, **F32)

    wts = [torch.randn_like(t) for t in (ry, rh, rc) if t is not None]
    got_outs = [t.cpu().double() for t in (y, h_n, c_n) if t is not None]
    loss = sum((o * w).sum() for o, w in zip(got_outs, wts))
    leaves = [x, h0, *([c0] if lstm else []), *params.values()]
    got = torch.autograd.grad(loss, leaves)
    rloss = sum((o * w).sum() for o, w in zip([t for t in (ry, rh, rc) if t is not None], wts))
    want = torch.autograd.grad(rloss, [x64, h64, *([c64] if lstm else []), *p64.values()])
    labels = ["x", "h0", *(["c0"] if lstm else []), *params]
    assert any(n.startswith("ln_hh") for n in labels) and len(got) == len(labels)
    for name, a, b in zip(labels, got, want):
        torch.testing.assert_close(a.cpu().double(), b, **F32,
                                   msg=lambda s, n=name: f"grad {n}: {s}")


def test_plan_keeps_rows_in_one_program():
    """Row-wise cells: never a split of the units; streamed with one program up to
    ROW_UNITS_MAX; wider layers and forced splits are refused, naming the cell."""
    for mode in LN_MODES:
        for H in (16, 64, 100, launch.ROW_UNITS_MAX):
            for dt in (torch.float32, torch.bfloat16):
                pl = launch.plan(mode, H, H, 64, dt, False, 132, 232448)
                assert pl.n_tiles == 1 and pl.BU >= H, (mode, H, dt, pl)
                assert pl.path in ("resident", "stream"), pl
        title = CELLS[mode].title.replace("(", r"\(").replace(")", r"\)")
        with pytest.raises(NotImplementedError, match=rf"{title} .*backend='reference'"):
            launch.plan(mode, launch.ROW_UNITS_MAX + 1, 32, 16, torch.float32, False, 132)
        with pytest.raises(ValueError, match=rf"{title} normalises whole rows"):
            launch.plan(mode, 64, 64, 16, torch.float32, False, 132, None, 16)
    # torch.nn's cells keep their split plans (the LN rule reads the trait, not the size)
    assert launch.plan("LSTM", 128, 128, 16, torch.float32, False, 132).n_tiles > 1


def test_dispatch_runs_ln_on_triton():
    """backend="triton" takes cell_params now (no refusal, no fallback warning)."""
    import warnings

    mod = backends.resolve("triton", DEV)
    assert backends._accepts(mod, "cell_params")
    ins, cp = make("LN_GRU", 2, 1, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, h, _ = backends.recurrence("LN_GRU", *(None if v is None else v.float().to(DEV)
                                                  for v in ins.values()), backend="triton",
                                      cell_params=[p.float().to(DEV) for p in cp])
    ry, rh, _ = recurrence_ref("LN_GRU", *ins.values(), cell_params=cp)
    torch.testing.assert_close(y.cpu().double(), ry, **F32)
    with pytest.raises(ValueError, match="LN_GRU needs cell_params"):
        tri.recurrence("LN_GRU", *(None if v is None else v.float().to(DEV)
                                   for v in ins.values()))


def test_too_wide_refused_by_name_auto_falls_back(monkeypatch):
    """H=129 pads to 256 > ROW_UNITS_MAX: backend="triton" raises NotImplementedError naming
    the cell (before any kernel runs); "auto" (made to resolve to triton here, as on a GPU)
    warns and returns the reference's numbers."""
    ins, cp = make("LN_GRU", 2, 1, 129)
    args = [None if v is None else v.float().to(DEV) for v in ins.values()]
    cpf = [p.float().to(DEV) for p in cp]
    assert tri.unsupported("LN_GRU", args[0], args[1], args[3]) is not None
    assert tri.unsupported("GRU", args[0], args[1], args[3]) is None
    with pytest.raises(NotImplementedError, match=r"LayerNormGRU \(LN_GRU\) .*H=129"):
        backends.recurrence("LN_GRU", *args, backend="triton", cell_params=cpf)
    monkeypatch.setattr(backends, "resolve", lambda name, device: tri)
    monkeypatch.setattr(backends.RECURRENCE, "_warned", set())
    with pytest.warns(UserWarning, match=r"backend 'triton' does not run this layer "
                      r"\(.*LayerNormGRU.*\); falling back to the reference"):
        y, h, _ = backends.recurrence("LN_GRU", *args, backend="auto", cell_params=cpf)
    ry, rh, _ = recurrence_ref("LN_GRU", *ins.values(), cell_params=cp)
    torch.testing.assert_close(y.cpu().double(), ry, **F32)
    torch.testing.assert_close(h.cpu().double(), rh, **F32)
