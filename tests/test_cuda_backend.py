"""The CUDA C++ backend (csrc/cuda, python/fusedrnn/ops/cuda.py), checked without a GPU where
possible:

- the kernels call cells.h and compute no cell math of their own (source check);
- every .cu compiles with nvcc for sm_80 and sm_90, no register spills (ptxas report);
- glue.cpp (the CUDA-only torch glue) passes a syntax-only compile against torch's headers;
- the time loops (loop.cpp) with a host emulation of the launchers (tests/cuda_emu/: the same
  element bodies the __global__ wrappers call) match the float64 reference, gradients included;
- on a GPU (marked ``gpu``), the real backend against the reference and torch.nn.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

import fusedrnn
from conftest import TOL
from fusedrnn.ops import cuda as cuda_backend
from fusedrnn.ops.cells import GATES
from fusedrnn.ops.reference import recurrence_ref

ROOT = Path(__file__).resolve().parents[1]
CUDA_SRC = ROOT / "csrc" / "cuda"
CELLS_H = ROOT / "csrc" / "include" / "fusedrnn" / "cells.h"


def _cuda_home() -> Path | None:
    for cand in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if cand and (Path(cand) / "include" / "cuda_runtime_api.h").exists():
            return Path(cand)
    nvcc = shutil.which("nvcc")
    if nvcc and (Path(nvcc).resolve().parents[1] / "include" / "cuda_runtime_api.h").exists():
        return Path(nvcc).resolve().parents[1]
    return None


CUDA_HOME = _cuda_home()
NVCC = shutil.which("nvcc") or (str(CUDA_HOME / "bin" / "nvcc") if CUDA_HOME else None)

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
    assert {p.name for p in cus} >= {"rnn.cu", "lstm.cu", "gru.cu", "common.cu"}
    for p in cus:
        assert '#include "fusedrnn/cells.h"' in p.read_text(), f"{p.name} does not include cells.h"
    body = _strip_comments((CUDA_SRC / "pointwise.cuh").read_text())
    # one call of the cell's forward and one of its backward, shared by every cell and dtype
    assert body.count("Ops::fwd(") == 1 and body.count("Ops::bwd(") == 1
    kernels = _strip_comments((CUDA_SRC / "kernels.cuh").read_text())
    assert kernels.count("__global__") == 5  # fwd, bwd, projection x2, clamp: no per-cell body


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
        cmd = [NVCC, "-std=c++17", "-O3", f"-I{ROOT / 'csrc' / 'include'}",
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
    # 4 cells x (forward in 4 storage dtypes + backward in 2 compute dtypes)
    assert len(pointwise) == 24, sorted(kernels)
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
# The loops and the kernels' element bodies on the host emulation (CPU tensors)

EMU = "fusedrnn_emu"
EMU_BUILD = ROOT / "build" / "cuda_emu"


@pytest.fixture(scope="module")
def emu():
    """Build loop.cpp + the host launchers (tests/cuda_emu/) and load them as fusedrnn_emu::."""
    if CUDA_HOME is None:
        pytest.skip("the CUDA runtime headers (cuda_runtime_api.h, cuda_bf16.h) are not found")
    if not hasattr(torch.ops, EMU) or not hasattr(getattr(torch.ops, EMU), "cuda_recurrence_fwd"):
        EMU_BUILD.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(name="fusedrnn_cuda_emu",
                 sources=[str(CUDA_SRC / "loop.cpp"), str(ROOT / "tests/cuda_emu/host_launchers.cpp"),
                          str(ROOT / "tests/cuda_emu/bind.cpp")],
                 extra_include_paths=[str(ROOT / "csrc/include"), str(CUDA_SRC),
                                      str(CUDA_HOME / "include")],
                 extra_cflags=["-O1"], build_directory=str(EMU_BUILD), is_python_module=False)
    ops = getattr(torch.ops, EMU)
    ops.cuda_set_debug_poison(True)  # every C++-allocated buffer starts as NaN
    yield ops
    ops.cuda_set_debug_poison(False)


def make_inputs(mode, dtype, T, B, H, *, proj=False, bias=True, c0=True, device="cpu", seed=0):
    """Random inputs of the op contract, rounded to ``dtype``: (xw, w_hh, b_hh, h0, c0, w_hr)."""
    g = torch.Generator().manual_seed(seed)
    G, P = GATES[mode], max(H - 2, 1)
    Ho = P if proj else H

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.6).to(dtype).to(device)

    return (r(T, B, G * H), r(G * H, Ho), r(G * H) if bias else None, r(B, Ho),
            r(B, H) if mode == "LSTM" and c0 else None, r(Ho, H) if proj else None)


def run_with_grads(fn, inputs, dtype, *, upcast):
    """Run ``fn`` on leaf copies of ``inputs`` (float64 copies if upcast) and return outputs and
    the gradients of a random linear loss over y, h_T and c_T (so dh0/dc0 are exercised). The
    loss weights are representable in ``dtype``, so both runs see the same upstream gradient."""
    leaves = [None if t is None else (t.detach().double() if upcast else t.detach()).clone()
              .requires_grad_() for t in inputs]
    y, h, c = fn(*leaves)
    g = torch.Generator().manual_seed(7)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)
                .to(dtype).double().to(o.device)).sum() for o in (y, h, c) if o is not None)
    loss.backward()
    return [y, h, c], [None if t is None else t.grad for t in leaves]


NAMES_OUT = ("y", "h_T", "c_T")
NAMES_GRAD = ("d_xw", "d_w_hh", "d_b_hh", "dh0", "dc0", "d_w_hr")


def check_parity(namespace_fn, mode, dtype, inputs, lengths, reverse, clip):
    """Backend ``namespace_fn`` vs the float64 reference on the same (rounded) inputs."""
    def ref(xw, w, b, h0, c0, w_hr):
        L = None if lengths is None else lengths.to(xw.device)
        return recurrence_ref(mode, xw, w, b, h0, c0, L, reverse, w_hr, recurrent_grad_clip=clip)

    def ours(xw, w, b, h0, c0, w_hr):
        return namespace_fn(mode, xw, w, b, h0, c0, lengths, reverse, w_hr, clip)

    out_r, g_r = run_with_grads(ref, inputs, dtype, upcast=True)
    out_o, g_o = run_with_grads(ours, inputs, dtype, upcast=False)
    given = [mode == "LSTM" if i == 2 else True for i in range(3)]
    given += [t is not None for t in inputs]
    for name, has, e, a in zip(NAMES_OUT + NAMES_GRAD, given, out_r + g_r, out_o + g_o):
        if not has or (e is None and a is None):
            assert e is None and a is None, name
        else:
            if e is None:  # autograd's None for an input the result does not depend on (T = 0)
                e = torch.zeros_like(a, dtype=torch.float64)
            assert a.dtype == dtype, (name, a.dtype)
            torch.testing.assert_close(a.double(), e, **TOL[dtype], msg=lambda m: f"{name}: {m}")
    return g_r


def emu_recurrence(mode, xw, w, b, h0, c0, lengths, reverse, w_hr, clip):
    return cuda_backend._recurrence(EMU, mode, xw, w, b, h0, c0, lengths, reverse, w_hr, clip)


LENGTHS = torch.tensor([6, 0, 3, 9, 1])  # unsorted, an empty row, one beyond T
VARIANTS = {  # id: (lengths, reverse, proj, clip, bias, c0)
    "plain": (None, False, False, None, True, True),
    "reverse": (None, True, False, None, True, False),
    "lengths": (LENGTHS, False, False, None, False, True),
    "lengths-reverse": (LENGTHS, True, False, None, True, True),
    "clip-lengths-reverse": (LENGTHS, True, False, 0.05, True, True),
    "proj-lengths": (LENGTHS, False, True, None, True, True),
    "proj-clip-reverse": (None, True, True, 0.05, True, False),
}
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
GRID = [(m, v, d) for m, v, d in itertools.product(GATES, VARIANTS, DTYPES)
        if not (VARIANTS[v][2] and m != "LSTM")]


@pytest.mark.parametrize("mode,variant,dtype", GRID,
                         ids=[f"{m}-{v}-{str(d)[6:]}" for m, v, d in GRID])
def test_emulated_parity(emu, nan_poison, mode, variant, dtype):
    lengths, reverse, proj, clip, bias, c0 = VARIANTS[variant]
    inputs = make_inputs(mode, dtype, T=7, B=5, H=13, proj=proj, bias=bias, c0=c0)
    check_parity(emu_recurrence, mode, dtype, inputs, lengths, reverse, clip)


@pytest.mark.parametrize("mode", list(GATES))
@pytest.mark.parametrize("T,B,H", [(1, 1, 13), (0, 3, 4), (63, 2, 3)], ids=str)
def test_emulated_odd_sizes(emu, mode, T, B, H):
    inputs = make_inputs(mode, torch.float64, T, B, H)
    check_parity(emu_recurrence, mode, torch.float64, inputs, None, True, None)


def test_emulated_clip_is_active(emu):
    # the clip cases above must actually clip: their reference gradients differ from unclipped
    inputs = make_inputs("LSTM", torch.float64, T=7, B=5, H=13)
    g_clip = check_parity(emu_recurrence, "LSTM", torch.float64, inputs, LENGTHS, True, 0.05)
    g_free = check_parity(emu_recurrence, "LSTM", torch.float64, inputs, LENGTHS, True, None)
    assert not torch.allclose(g_clip[0], g_free[0])


@pytest.mark.parametrize("mode", list(GATES))
def test_emulated_gradcheck(emu, mode):
    proj = mode == "LSTM"
    inputs = make_inputs(mode, torch.float64, T=4, B=3, H=3, proj=proj)
    present = [t.requires_grad_() for t in inputs if t is not None]
    L = torch.tensor([4, 2, 3])

    def f(*ts):
        it = iter(ts)
        xw, w, b, h0, c0, w_hr = (None if t is None else next(it) for t in inputs)
        y, h, c = emu_recurrence(mode, xw, w, b, h0, c0, L, True, w_hr, None)
        return (y, h) if c is None else (y, h, c)

    assert torch.autograd.gradcheck(f, present)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_emulated_opcheck(emu, mode):
    xw, w, b, h0, c0, w_hr = make_inputs(mode, torch.float32, T=3, B=2, H=4, proj=mode == "LSTM")
    cuda_backend.register(EMU)
    for t in (xw, w, b, h0, c0, w_hr):
        if t is not None:
            t.requires_grad_()
    args = (mode, xw, w, b, h0, c0, torch.tensor([3, 1]), True, w_hr, 0.0)
    torch.library.opcheck(emu.cuda_recurrence_fwd.default, args)


def test_emulated_errors(emu):
    xw, w, b, h0, c0, _ = make_inputs("LSTM", torch.float32, T=3, B=2, H=4)
    with pytest.raises(TypeError, match="dtype"):
        emu_recurrence("LSTM", xw.int(), w.int(), None, h0.int(), None, None, False, None, None)
    with pytest.raises(ValueError, match="h0 must have shape"):
        emu_recurrence("LSTM", xw, w, b, h0[:1], c0, None, False, None, None)
    with pytest.raises(RuntimeError, match="saved must be"):
        y = torch.zeros(3, 2, 4)
        emu.cuda_recurrence_bwd("LSTM", y, None, None, w, b, h0, c0, None, False, None, 0.0,
                                y, torch.zeros(3, 2, 5), torch.zeros(3, 2, 4), torch.zeros(0),
                                torch.zeros(0))


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


# ---------------------------------------------------------------------------------------------
# On a GPU


def cuda_recurrence(mode, xw, w, b, h0, c0, lengths, reverse, w_hr, clip):
    return cuda_backend.recurrence(mode, xw, w, b, h0, c0, lengths, reverse, w_hr, clip)


@pytest.mark.gpu
@pytest.mark.parametrize("mode,variant,dtype", GRID,
                         ids=[f"{m}-{v}-{str(d)[6:]}" for m, v, d in GRID])
def test_gpu_parity(mode, variant, dtype):
    torch.ops.fusedrnn.cuda_set_debug_poison(True)
    try:
        lengths, reverse, proj, clip, bias, c0 = VARIANTS[variant]
        inputs = make_inputs(mode, dtype, T=7, B=37, H=45, proj=proj, bias=bias, c0=c0,
                             device="cuda")
        L = None if lengths is None else lengths.repeat(8)[:37]
        check_parity(cuda_recurrence, mode, dtype, inputs, L, reverse, clip)
    finally:
        torch.ops.fusedrnn.cuda_set_debug_poison(False)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", list(GATES))
def test_gpu_large_hidden(mode):
    inputs = make_inputs(mode, torch.float32, T=5, B=3, H=1100, device="cuda")
    check_parity(cuda_recurrence, mode, torch.float32, inputs, None, False, None)


@pytest.mark.gpu
@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_gpu_layer_vs_torch_nn(cls):
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(6, 9, num_layers=2, bidirectional=True).cuda().double()
    ours = getattr(fusedrnn, cls)(6, 9, num_layers=2, bidirectional=True, backend="cuda")
    ours = ours.cuda().double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(11, 4, 6, device="cuda", dtype=torch.float64)
    out_r, out_o = ref(x), ours(x)
    torch.testing.assert_close(out_o[0], out_r[0], **TOL[torch.float64])
    out_r[0].sum().backward()
    out_o[0].sum().backward()
    for (n, p), q in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, **TOL[torch.float64], msg=n)


@pytest.mark.gpu
def test_gpu_opcheck():
    xw, w, b, h0, c0, w_hr = make_inputs("LSTM", torch.float32, T=3, B=2, H=4, proj=True,
                                         device="cuda")
    args = ("LSTM", xw.requires_grad_(), w.requires_grad_(), b, h0, c0,
            torch.tensor([3, 1], device="cuda"), True, w_hr, 0.0)
    torch.library.opcheck(torch.ops.fusedrnn.cuda_recurrence_fwd.default, args)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
