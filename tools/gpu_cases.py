"""One small case per GPU path, forward and backward, checked against the reference: the
workload ``tools/gpu_check.sh`` runs under compute-sanitizer (memcheck, racecheck).

    python tools/gpu_cases.py --list
    python tools/gpu_cases.py triton-resident triton-stream-split cuda-LSTM
    python tools/gpu_cases.py all --spin 65536   # a shorter barrier spin (sanitizers are slow)

Each Triton case asserts that ``launch.layer_plan`` really picks the path it is named after (the
barrier paths are enabled for the run), so a change of the path rules cannot make a case
silently check another path. Exit status: 0 all passed, 3 a case failed (mismatch, wrong path or
an error), 2 bad arguments. Prints one line per case.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

from fusedrnn import backends  # noqa: E402
from fusedrnn.ops.cells import CELLS, GATES  # noqa: E402
from fusedrnn.ops.reference import recurrence_ref  # noqa: E402

BF, F32 = torch.bfloat16, torch.float32
#: name -> (mode, H, P or None, B, dtype, expected path, expected tiles > 1, grid barrier on)
TRITON = {
    "triton-resident": ("LSTM", 32, None, 4, BF, "resident", False, True),
    "triton-persistent": ("LSTM", 128, None, 16, BF, "persistent", True, True),
    "triton-stream-solo": ("GRU", 64, None, 5, F32, "stream", False, True),
    "triton-stream-split": ("RNN_TANH", 256, None, 16, BF, "stream", True, True),
    "triton-proj-split": ("LSTM", 256, 128, 16, BF, "stream", True, True),
    "triton-per-step": ("GRU", 256, None, 16, BF, "per_step", True, False),
}
CUDA = {f"cuda-{m}": (m, 48, None, 5, F32) for m in GATES} | {
    "cuda-LSTM-proj": ("LSTM", 48, 24, 5, F32)}
#: tolerances against the float64 reference: fp32 (3xTF32) near fp32, bf16 products
TOL = {F32: dict(rtol=1e-4, atol=1e-4), BF: dict(rtol=2e-2, atol=2e-2)}


def _inputs(mode, H, P, B, T, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    G, Ho = GATES[mode], P or H

    def r(*shape, scale=0.5):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    ins = [r(T, B, G * H), r(G * H, Ho, scale=Ho ** -0.5), r(G * H, scale=0.3), r(B, Ho),
           r(B, H) if CELLS[mode].has_cell_state else None]
    w_hr = r(Ho, H, scale=H ** -0.5) if P else None
    lengths = torch.tensor([T - (i % T) for i in range(B)], dtype=torch.int64)
    return ins, w_hr, lengths


def _run(fn, mode, ins, w_hr, lengths, device, reverse=False):
    leaves = [None if t is None else t.detach().to(device).requires_grad_() for t in ins + [w_hr]]
    y, h, c = fn(mode, *leaves[:5], lengths.to(device), reverse, leaves[5])
    g = torch.Generator().manual_seed(1)
    outs = [t for t in (y, h, c) if t is not None]
    loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64)
                .to(t.device)).sum() for t in outs)
    loss.backward()
    return [t.detach().double().cpu() for t in outs] + [
        leaf.grad.double().cpu() for leaf in leaves if leaf is not None]


def _compare(got, want, dtype):
    assert len(got) == len(want), (len(got), len(want))
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m, i=i: f"tensor {i}: {m}")


def run_triton(name, device):
    from fusedrnn.ops import triton as tri
    from fusedrnn.ops.triton import launch, validated

    mode, H, P, B, dtype, path, split, barrier = TRITON[name]
    validated.allow_grid_barrier(barrier)
    try:
        pl = launch.layer_plan(mode, H, P or H, B, dtype, P is not None, device)
        assert pl.path == path and (pl.n_tiles > 1) == split, f"plan is {pl}, expected {path}"
        ins, w_hr, lengths = _inputs(mode, H, P, B, 6, dtype)
        got = _run(tri.recurrence, mode, ins, w_hr, lengths, device, reverse=True)
    finally:
        validated.allow_grid_barrier(None)
    # the reference on the same rounded values, in float64
    want = _run(recurrence_ref, mode, [None if t is None else t.double() for t in ins],
                None if w_hr is None else w_hr.double(), lengths, "cpu", reverse=True)
    _compare(got, want, dtype)
    return f"{path} {pl.BU}x{pl.n_tiles} {str(dtype)[6:]}"


def run_cuda(name, device):
    mode, H, P, B, dtype = CUDA[name]
    ins, w_hr, lengths = _inputs(mode, H, P, B, 6, dtype)

    def fn(*a):
        return backends.recurrence(*a, backend="cuda")

    got = _run(fn, mode, ins, w_hr, lengths, device)
    want = _run(recurrence_ref, mode, [None if t is None else t.double() for t in ins],
                None if w_hr is None else w_hr.double(), lengths, "cpu")
    _compare(got, want, dtype)
    return f"cuda backend {mode}{' proj' if P else ''}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases", nargs="*", help="case names, 'all', 'triton' or 'cuda'")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--spin", type=int, default=None, help="grid-barrier polls before giving up")
    args = ap.parse_args(argv)
    names = list(TRITON) + list(CUDA)
    if args.list:
        print("\n".join(names))
        return 0
    todo = []
    for c in args.cases or ["all"]:
        todo += (names if c == "all" else [n for n in names if n.startswith(c + "-")]
                 if c in ("triton", "cuda") else [c])
    bad = [c for c in todo if c not in names]
    if bad:
        print(f"unknown case(s) {bad}; known: {names}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_cases: no CUDA device")
        return 0
    device = torch.device("cuda")
    if args.spin is not None:
        from fusedrnn.ops.triton import launch

        launch.BARRIER_SPIN_MAX = args.spin
    failed = 0
    for name in todo:
        try:
            what = (run_triton if name in TRITON else run_cuda)(name, device)
            torch.cuda.synchronize()
            print(f"PASS {name}: {what}", flush=True)
        except Exception as e:  # every case reports; the exit status counts the failures
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {' '.join(str(e).split())[:400]}", flush=True)
            traceback.print_exc(file=sys.stderr)
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
