"""The CUDA C++ backend (csrc/cuda, python/fusedrnn/ops/cuda.py): its build, checked without a
GPU:

- the kernels call cells.h and compute no cell math of their own (source check);
- every .cu compiles with nvcc for sm_80 and sm_90, no register spills (ptxas report), and the
  objects define every launcher the time loop calls;
- glue.cpp (the CUDA-only torch glue) passes a syntax-only compile against torch's headers;
- unavailable() says why the backend cannot run here.

Numerics (emulated on CPU, and on a GPU): test_cuda_parity.py.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

import fusedrnn
from cuda_utils import CUDA_HOME, CUDA_SRC, EMU_BUILD, NVCC, ROOT, emu, make_inputs  # noqa: F401
from fusedrnn.ops import cuda as cuda_backend
from fusedrnn.ops.cells import CELLS, GATES

# ---------------------------------------------------------------------------------------------
# The kernels are thin wrappers around cells.h


# calls of an activation or exponential, or of cells.h's own helpers: only cells.h may do that
_CELL_MATH = re.compile(
    r"\b(?:h?tanhf?|__tanhf|expf?|exp2f?|expm1f?|__expf|__exp10f|hexp\w*|h2exp\w*|logf?|log1pf?|"
    r"__logf|powf?|__powf|erff?|\w*sigmoid\w*|\w*relu\w*|fr_exp|fr_tanh)\s*\("
)


def _strip_comments(src: str) -> str:
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    src = re.sub(r"//[^\n]*", " ", src)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', src)


def cell_math_violations(src: str) -> list[str]:
    """The activation/exponential calls in C++/CUDA source, comments and strings ignored."""
    return [m.group(0) for m in _CELL_MATH.finditer(_strip_comments(src))]


def test_cell_math_checker_can_fail():
    assert cell_math_violations("float s = 1.f / (1.f + __expf(-x)); float t = tanhf(y);")
    assert cell_math_violations("template <class T> T my_sigmoid (T x) { return x; }")
    assert not cell_math_violations("// o * tanh(c)\n/* expf(x) */ const char* s = \"tanh(\";")


@pytest.mark.parametrize("path", sorted(CUDA_SRC.glob("*")), ids=lambda p: p.name)
def test_cuda_sources_compute_no_cell_math(path):
    assert not cell_math_violations(path.read_text()), (
        f"{path.name} computes cell math itself; call the cells.h functions instead")


def test_each_kernel_file_includes_cells_h_and_calls_it_once():
    cus = sorted(CUDA_SRC.glob("*.cu"))
    assert {p.name for p in cus} >= {"pointwise.cu", "common.cu"}
    for p in cus:
        assert '#include "fusedrnn/cells.h"' in p.read_text(), f"{p.name} does not include cells.h"
    body = _strip_comments((CUDA_SRC / "pointwise.cuh").read_text())
    # one call of the cell's forward and one of its backward, shared by every cell and dtype
    assert body.count("Ops::fwd(") == 1 and body.count("Ops::bwd(") == 1
    kernels = _strip_comments((CUDA_SRC / "kernels.cuh").read_text())
    # fwd, bwd, projection x2, clamp, and the 4 row kernels of the LayerNorm cells (recurrent
    # product and cell state, forward and backward): no per-cell body
    assert kernels.count("__global__") == 9


# ---------------------------------------------------------------------------------------------
# nvcc compile for sm_80 / sm_90

_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(log: str) -> dict[str, dict]:
    """{mangled kernel: {"regs": int, "spill_stores": int, "spill_loads": int}} from -Xptxas -v."""
    out, cur = {}, None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            cur = out.setdefault(m.group(1), {})
        elif cur is not None and (m := _SPILL.search(line)):
            cur["spill_stores"], cur["spill_loads"] = int(m.group(1)), int(m.group(2))
        elif cur is not None and (m := _REGS.search(line)):
            cur["regs"] = int(m.group(1))
    return out


ARCHS = ("sm_80", "sm_90")


def compile_cu(out_dir: Path) -> dict[str, dict[str, tuple[int, str]]]:
    """nvcc -c every csrc/cuda/*.cu for every arch, all at once: {arch: {file: (rc, log)}}."""
    procs = {}
    for arch, cu in itertools.product(ARCHS, sorted(CUDA_SRC.glob("*.cu"))):
        cmd = [NVCC, "-std=c++17", "-O3", "-Xcompiler", "-Wall,-Wextra", "-Werror", "all-warnings",
               f"-I{ROOT / 'csrc' / 'include'}",
               f"-gencode=arch=compute_{arch[3:]},code={arch}", "-Xptxas", "-v", "-c", str(cu),
               "-o", str(out_dir / arch / f"{cu.stem}.o")]
        (out_dir / arch).mkdir(exist_ok=True)
        procs[arch, cu.name] = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True)
    out: dict[str, dict[str, tuple[int, str]]] = {arch: {} for arch in ARCHS}
    for (arch, name), p in procs.items():
        log = p.communicate()[0]
        out[arch][name] = (p.returncode, log)
    return out


@pytest.fixture(scope="module")
def cu_objects(tmp_path_factory):
    """The nvcc results and the directory of the objects ({dir}/{arch}/{stem}.o)."""
    if NVCC is None:
        pytest.skip("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda)")
    out = tmp_path_factory.mktemp("cu")
    return compile_cu(out), out


@pytest.mark.parametrize("arch", ARCHS)
def test_kernels_compile_without_spills(arch, cu_objects):
    results = cu_objects[0][arch]
    kernels = {}
    for name, (rc, log) in results.items():
        assert rc == 0, f"nvcc failed on {name} for {arch}:\n{log[-3000:]}"
        found = parse_ptxas(log)
        assert found, f"no ptxas report for {name}:\n{log[-2000:]}"
        kernels.update(found)
    pointwise = [k for k in kernels if "pointwise_" in k]
    # every cell x (forward in 4 storage dtypes + backward in 2 compute dtypes)
    assert len(pointwise) == len(GATES) * 6, sorted(kernels)
    # the row kernels: the recurrent product's (A in float, double) x (fwd, bwd) and the cell
    # state's for each norm_state cell (fwd in 4 storage dtypes + bwd in 2)
    n_state = sum(1 for c in CELLS.values() if len(c.cell_params) >= 2)
    rows = [k for k in kernels if "norm_rec_" in k or "norm_state_" in k]
    assert len(rows) == 4 + 6 * n_state, sorted(rows)
    for k, info in kernels.items():
        assert set(info) == {"regs", "spill_stores", "spill_loads"}, (k, info)
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0, (arch, k, info)


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
def test_kernel_objects_define_every_launcher_the_loop_calls(emu, cu_objects):
    # the host emulation links loop.cpp against its own launchers; this checks that the .cu
    # objects instantiate every launcher loop.cpp calls, so fusedrnn._C_cuda links
    results, out = cu_objects
    assert all(rc == 0 for rc, _ in results["sm_80"].values())
    needed = set()
    for line in subprocess.run(["nm", "-C", "--undefined-only", str(EMU_BUILD / "loop.o")],
                               capture_output=True, text=True, check=True).stdout.splitlines():
        if "fusedrnn::cuda::" in line:
            needed.add(line.strip()[2:].strip())
    defined = set()
    for obj in (out / "sm_80").glob("*.o"):
        for line in subprocess.run(["nm", "-C", "--defined-only", str(obj)], capture_output=True,
                                   text=True, check=True).stdout.splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[1] in ("T", "W") and "fusedrnn::cuda::" in parts[2]:
                defined.add(parts[2])
    assert len(needed) >= 30, sorted(needed)
    assert not needed - defined, sorted(needed - defined)


@pytest.mark.skipif(CUDA_HOME is None or shutil.which("g++") is None,
                    reason="needs g++ and the CUDA runtime headers")
def test_glue_compiles_against_torch_headers(tmp_path):
    # The CPU wheel lacks c10/cuda/impl/cuda_cmake_macros.h (generated for CUDA builds); an
    # empty stand-in is enough for a syntax-only compile of glue.cpp.
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    inc = Path(cpp_extension.include_paths()[0])
    cmd = ["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
           f"-I{ROOT / 'csrc' / 'include'}",
           "-isystem", str(tmp_path), "-isystem", str(inc),
           "-isystem", str(inc / "torch" / "csrc" / "api" / "include"),
           "-isystem", sysconfig.get_paths()["include"], "-isystem", str(CUDA_HOME / "include"),
           str(CUDA_SRC / "glue.cpp")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]


# ---------------------------------------------------------------------------------------------
# Availability on this machine


def test_unavailable_says_why():
    why = cuda_backend.unavailable()
    if torch.version.cuda is None:
        assert why and "CPU-only" in why
    assert not cuda_backend.supports(torch.device("cpu"))
    assert cuda_backend.supports(torch.device("cuda", 0))
    if why is not None:
        xw, w, b, h0, c0, _ = make_inputs("GRU", torch.float32, T=2, B=2, H=3)
        with pytest.raises(RuntimeError, match="not available"):
            fusedrnn.recurrence("GRU", xw, w, b, h0, backend="cuda")
