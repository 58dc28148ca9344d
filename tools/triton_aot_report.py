"""Compile every fused Triton kernel ahead of time for sm_80 / sm_90 and report its resources.

No GPU is needed: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` lowers to
PTX on the CPU. Per kernel, config and arch this prints registers per thread, spilled bytes
(stores / loads), shared memory and how many bytes of weights one program holds for the whole
sequence. Registers and spills come from ``ptxas -v`` on the produced PTX with the ptxas and
flags Triton used (cross-checked against the built cubin); shared memory from Triton's metadata.

Run with TRITON_INTERPRET unset (``@triton.jit`` picks the interpreter at import time):

    python tools/triton_aot_report.py            # the table
    python tools/triton_aot_report.py --check    # exit 1 if any compile fails
    python tools/triton_aot_report.py --json out.json --hidden 32,64 --archs 90 --modes LSTM
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: the kernels must be JIT functions to be compiled")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia import compiler as nv_compiler  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fusedrnn.ops.cells import CELLS, GATES, MODES  # noqa: E402
from fusedrnn.ops.triton import launch  # noqa: E402
from fusedrnn.ops.triton.kernels import rnn_bwd_kernel, rnn_fwd_kernel  # noqa: E402

ARCHS = (80, 90)
#: the most shared memory one block may use (CUDA programming guide, compute capabilities)
SMEM_LIMIT = {80: 166912, 90: 232448}
HIDDEN = (32, 64, 128, 256)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}
_BATCH = 16
#: SMs of an H100 SXM, for the path choice (the persistent split needs grid <= SMs)
N_SM = 132
_F = "*fp32"


def _signature(kernel, ptrs: dict, consts: dict) -> dict:
    return {n: "constexpr" if n in consts else ptrs.get(n, "i32") for n in kernel.arg_names}


def _weight_bytes(mode, pl, dt, proj) -> int:
    """Weight bytes one program holds on chip for the whole sequence (0: streamed per step)."""
    if pl.stream:
        return 0
    elt = 8 if dt == torch.float32 else 2  # fp32: hi and lo TF32 halves
    return GATES[mode] * pl.BU * pl.PP * elt + (pl.PP * pl.HP * elt if proj else 0)


def _fits(mode, H, P, B, dt, proj, arch) -> bool:
    """Whether launch.plan accepts the layer within ``arch``'s shared memory per block."""
    try:
        launch.plan(mode, H, P, B, dt, proj, N_SM, SMEM_LIMIT[arch])
    except NotImplementedError:
        return False
    return True


def configs(modes=MODES, hidden=HIDDEN, dtypes=DTYPES, extra=True):
    """(label, kernel, signature, constexprs, plan, weight bytes, refused archs) per config.

    The plan is the one ``launch.plan`` makes on an H100 for B=16; every LSTM also with a
    projection (P = H/2). ``extra`` adds the published cuDNN comparison point (LSTM H=768 bf16)
    and, at B=256 where its grid exceeds the SMs, its per-step path (one launch per step, and
    for the projected split one per half-step: PHASE 1 and 2). At H <= 128 every kernel also
    with ``reset=`` and zoneout on (``+rz``).
    """
    out = []
    todo = [(m, H, d, _BATCH) for m in modes for H in hidden for d in dtypes]
    if extra and "LSTM" in modes:
        todo += [("LSTM", 768, "bf16", _BATCH), ("LSTM", 768, "bf16", 256)]
    for mode, H, dname, B in todo:
        dt = DTYPES[dname]
        projs = (False, True) if CELLS[mode].projection else (False,)
        for proj in projs:
            P = H // 2 if proj else H
            try:
                pl = launch.plan(mode, H, P, B, dt, proj, N_SM)
            except NotImplementedError:  # a row-wise (LayerNorm) cell wider than one program
                continue
            k = launch._consts(mode, pl, dt, proj, None, False)
            tag = f"P={P}" if proj else ""
            label = f"{mode:<8} H={H:<4}{tag:<6}{dname} {pl.path}" + (f" B={B}" if B != _BATCH else "")
            t = _PTR[dt]
            fwd_ptrs = dict(xw=t, w=t, b=t, w_hr=t, h0=t, c_in=t, lengths="*i64", reset=_F,
                            zoh=t, zoc=t, cp=t, rnorm=_F, stats=_F, y=t,
                            h_out=_F, c_out=_F, act=_F, hprev=_F, cprev=_F, hbuf=_F, mbuf=_F,
                            counter="*i32")
            bwd_ptrs = dict(w=t, w_hr=t, dy=t, act=_F, hprev=_F, cprev=_F,
                            lengths="*i64", reset=_F, zoh=t, zoc=t, cp=t, rnorm=_F, stats=_F,
                            dxw=_F, drec=_F, dhtot=_F, dwh=_F, dcp=_F,
                            r_state=_F,
                            dc_state=_F, dh0=_F, dc0=_F, counter="*i32", clip="fp32")
            kernels = []
            for phase in launch._phases(k) if pl.path == "per_step" else (0,):
                suffix = f"/{phase}" if phase else ""
                kernels += [(f"fwd{suffix}", rnn_fwd_kernel, fwd_ptrs,
                             dict(k, HAS_BIAS=True, SAVE=True, PHASE=phase)),
                            (f"bwd{suffix}", rnn_bwd_kernel, bwd_ptrs,
                             dict(k, CLIP=False, PHASE=phase, **launch.bwd_traits(mode)))]
                if H <= 128:  # with reset= and zoneout (the spill target's sizes)
                    rz = dict(HAS_RESET=True, HAS_ZO=True, PHASE=phase)
                    kernels += [(f"fwd+rz{suffix}", rnn_fwd_kernel, fwd_ptrs,
                                 dict(k, HAS_BIAS=True, SAVE=True, **rz)),
                                (f"bwd+rz{suffix}", rnn_bwd_kernel, bwd_ptrs,
                                 dict(k, CLIP=False, **rz, **launch.bwd_traits(mode)))]
            if H == 64 and not proj:  # the recurrent_grad_clip variant, once per cell and dtype
                kernels.append(("bwd+clip", rnn_bwd_kernel, bwd_ptrs,
                                dict(k, CLIP=True, **launch.bwd_traits(mode))))
            for name, kern, ptrs, cs in kernels:
                used = {n: v for n, v in cs.items() if n in kern.arg_names}
                refused = tuple(a for a in ARCHS if not _fits(mode, H, P, B, dt, proj, a))
                out.append((f"{name} {label}", kern, _signature(kern, ptrs, used), used,
                            pl, _weight_bytes(mode, pl, dt, proj), refused))
    return out


def _ptxas(ptx: str, arch: int) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from ``ptxas -v``.

    Replays the command Triton itself ran to build the cubin (same ptxas binary, same flags:
    ``-lineinfo --regAllocOptLevel=2``), so the numbers are those of the compiled kernel;
    ``compile_one`` cross-checks the register count against the cubin.
    """
    ptxas = nv_compiler.get_ptxas(arch).path
    sm = nv_compiler.sm_arch_from_capability(arch)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as fh:
            fh.write(ptx)
        cmd = [ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={sm}", src,
               "-o", os.path.join(d, "k.o")]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    st, ld = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups()
    return regs, int(st), int(ld)


def _cubin_regs(cubin: bytes) -> int:
    """Registers per thread of the cubin Triton built (cuobjdump -res-usage)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as fh:
            fh.write(cubin)
        out = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True,
                             check=True).stdout
    return int(re.search(r"REG:(\d+)", out).group(1))


def compile_one(kern, sig, consts, arch, num_warps, num_stages=launch.NUM_STAGES) -> dict:
    """Compile for one arch and measure it; raises when Triton or ptxas fails."""
    src = ASTSource(fn=kern, signature=sig, constexprs=consts)
    ck = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                        options={"num_warps": num_warps, "num_stages": num_stages})
    if ck.metadata.shared > SMEM_LIMIT[arch]:
        raise RuntimeError(f"shared memory {ck.metadata.shared} B > sm_{arch} limit {SMEM_LIMIT[arch]} B")
    regs, st, ld = _ptxas(ck.asm["ptx"], arch)
    built = _cubin_regs(ck.asm["cubin"])
    if built != regs:
        raise RuntimeError(f"ptxas replay says {regs} registers, the built cubin {built}")
    return dict(regs=regs, spill_st=st, spill_ld=ld, smem=ck.metadata.shared)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if any kernel fails to compile")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--hidden", default=",".join(map(str, HIDDEN)))
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--archs", default=",".join(map(str, ARCHS)))
    ap.add_argument("--no-extra", action="store_true", help="skip the LSTM H=768 bf16 row")
    args = ap.parse_args(argv)
    dts = {d: DTYPES[d] for d in args.dtypes.split(",")}
    archs = tuple(int(a) for a in args.archs.split(","))
    cfgs = configs(tuple(args.modes.split(",")), tuple(int(h) for h in args.hidden.split(",")), dts,
                   extra=not args.no_extra)
    rows, failed = [], 0
    print(f"{'kernel / config':<48} {'sm':>3} {'BU':>4} {'tiles':>5} {'w KiB':>6} {'warps':>5} "
          f"{'regs':>5} {'spill st/ld B':>14} {'smem B':>7}")
    for label, kern, sig, consts, pl, wbytes, refused in cfgs:
        for arch in archs:
            if arch in refused:  # launch.plan raises NotImplementedError there: nothing to run
                print(f"{label:<48} {arch:>3} refused by launch.plan: shared memory", flush=True)
                continue
            try:
                r = compile_one(kern, sig, consts, arch, pl.num_warps, pl.stages)
            except Exception as e:  # counted; --check turns it into a non-zero exit
                failed += 1
                msg = " ".join(str(e).split())[:300]
                print(f"{label:<48} {arch:>3} FAILED: {type(e).__name__}: {msg}", flush=True)
                rows.append(dict(config=label, arch=arch, error=msg))
                continue
            spill = f"{r['spill_st']}/{r['spill_ld']}"
            print(f"{label:<48} {arch:>3} {pl.BU:>4} {pl.n_tiles:>5} {wbytes / 1024:>6.0f} "
                  f"{pl.num_warps:>5} {r['regs']:>5} {spill:>14} {r['smem']:>7}", flush=True)
            rows.append(dict(config=label, arch=arch, BU=pl.BU, n_tiles=pl.n_tiles, BK=pl.BK,
                             stages=pl.stages,
                             weight_bytes=wbytes, num_warps=pl.num_warps, **r))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    print(f"{len(rows) - failed} compiled, {failed} failed")
    return 1 if (failed and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
