"""Compile the Triton scan kernels ahead of time for sm_80 and sm_90; no GPU needed.

    python -m fusedrnn.scan.aot            # prints one line per kernel variant and target

Each line gives the registers per thread, the spill stores/loads (from ``ptxas -v`` run on the
PTX Triton produced, with the ptxas Triton itself picks for that target) and the shared memory
of the kernel. Exits non-zero when any variant fails to compile or spills. Must run WITHOUT
``TRITON_INTERPRET=1`` (the interpreter replaces the kernels by Python functions);
tests/test_scan_triton.py runs it in a subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

TARGETS = (80, 90)


def _variants():
    import triton.language as tl

    from . import triton as tr

    fwd_ptrs = ("a_ptr", "b_ptr", "h0_ptr", "h_ptr")
    bwd_ptrs = ("a_ptr", "b_ptr", "h_ptr", "h0_ptr", "gh_ptr", "da_ptr", "db_ptr", "dh0_ptr")
    for kern, ptrs in ((tr.scan_fwd_kernel, fwd_ptrs), (tr.scan_bwd_kernel, bwd_ptrs)):
        for dtype, acc in (("fp32", tl.float32), ("bf16", tl.float32), ("fp64", tl.float64)):
            for log in (False, True):
                sig = {p: f"*{dtype}" for p in ptrs}
                sig.update(T="i32", D="i32")
                const = dict(HAS_H0=True, REVERSE=False, LOG=log, ACC=acc,
                             BLOCK_T=tr.BLOCK_T, BLOCK_D=tr.BLOCK_D)
                sig.update({k: "constexpr" for k in const})
                name = f"{kern.__name__}[{dtype}{',log' if log else ''}]"
                yield name, kern, sig, const, tr.NUM_WARPS


def _ptxas_report(ptx: str, cc: int) -> tuple[int, int, int]:
    """(registers, spill stores, spill loads) from ``ptxas -v`` on Triton's PTX."""
    from triton.backends.nvidia.compiler import get_ptxas

    arch = re.search(r"\.target\s+(\w+)", ptx).group(1)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([get_ptxas(cc).path, "-v", f"--gpu-name={arch}", src, "-o",
                            os.path.join(d, "k.cubin")], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ptxas failed for {arch}: {r.stderr.strip()}")
    regs = int(re.search(r"Used (\d+) registers", r.stderr).group(1))
    st, ld = map(int, re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads",
                                r.stderr).groups())
    return regs, st, ld


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("error: run without TRITON_INTERPRET=1 (the interpreter does not compile)")
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failed = 0
    for cc in TARGETS:
        for name, kern, sig, const, num_warps in _variants():
            try:
                src = ASTSource(fn=kern, signature=sig, constexprs=const)
                ck = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                                    options=dict(num_warps=num_warps))
                regs, st, ld = _ptxas_report(ck.asm["ptx"], cc)
            except Exception as e:  # report every variant, then fail
                failed += 1
                print(f"FAIL sm_{cc} {name}: {type(e).__name__}: {e}")
                continue
            ok = st == 0 and ld == 0 and len(ck.asm["cubin"]) > 0
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} sm_{cc} {name}: registers={regs} "
                  f"spill_stores={st} spill_loads={ld} shared={ck.metadata.shared} "
                  f"num_warps={num_warps}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
