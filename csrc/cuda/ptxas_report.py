"""Print a markdown table of registers and spills per kernel of csrc/cuda/*.cu for sm_80 and
sm_90 (nvcc -Xptxas -v; no GPU needed). Run from the repository root:

    python csrc/cuda/ptxas_report.py

Used for the table in docs/cuda_backend.md.
"""
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, "python")
from fusedrnn.ops.cells import MODES  # noqa: E402  (cells.h enum order)

out = Path(tempfile.mkdtemp())
rows = {}
for arch in ("sm_80", "sm_90"):
    for cu in sorted(Path("csrc/cuda").glob("*.cu")):
        r = subprocess.run(["nvcc", "-std=c++17", "-O3", "-Icsrc/include",
                            f"-gencode=arch=compute_{arch[3:]},code={arch}", "-Xptxas", "-v", "-c",
                            str(cu), "-o", str(out / f"{cu.stem}_{arch}.o")],
                           capture_output=True, text=True, check=True)
        cur = None
        for line in (r.stdout + r.stderr).splitlines():
            if m := re.search(r"Compiling entry function '(\S+)'", line):
                cur = rows.setdefault(m.group(1), {}).setdefault(arch, {})
            elif m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
                cur["spill"] = f"{m.group(1)}/{m.group(2)}"
            elif m := re.search(r"Used (\d+) registers", line):
                cur["regs"] = m.group(1)
names = subprocess.run(["c++filt"], input="\n".join(rows), capture_output=True,
                       text=True).stdout.splitlines()
cells = {str(i): name for i, name in enumerate(MODES)}


def short(n):
    """pointwise_fwd_kernel<LSTM, float> from the demangled signature."""
    n = n.replace("void ", "").replace("fusedrnn::cuda::", "")
    n = re.sub(r"\(fusedrnn::Cell\)(\d)", lambda m: cells[m.group(1)], n)
    return n[: n.index(">(") + 1]


print("| kernel | sm_80 regs | sm_80 spill st/ld (B) | sm_90 regs | sm_90 spill st/ld (B) |")
print("| --- | ---: | ---: | ---: | ---: |")
for k, n in sorted(zip(rows, names), key=lambda x: short(x[1])):
    a, b = rows[k]["sm_80"], rows[k]["sm_90"]
    print(f"| `{short(n)}` | {a['regs']} | {a['spill']} | {b['regs']} | {b['spill']} |")
