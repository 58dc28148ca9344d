"""Shared pieces of the CUDA backend tests (test_cuda_backend.py, test_cuda_parity.py): where the
CUDA toolkit is, the host-emulated ops (fusedrnn_emu::, built from csrc/cuda/loop.cpp and
tests/cuda_emu/), random inputs of the op contract and the parity check against the float64
reference."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

from conftest import TOL
from fusedrnn.ops import cuda as cuda_backend
from fusedrnn.ops.cells import GATES, TORCH_MODES
from fusedrnn.ops.reference import recurrence_ref

ROOT = Path(__file__).resolve().parents[1]
CUDA_SRC = ROOT / "csrc" / "cuda"

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

EMU = "fusedrnn_emu"
EMU_BUILD = ROOT / "build" / "cuda_emu"


@pytest.fixture(scope="module")
def emu():
    """Build loop.cpp + the host launchers (tests/cuda_emu/) and load them as fusedrnn_emu::."""
    if CUDA_HOME is None:
        pytest.skip("the CUDA runtime headers (cuda_runtime_api.h, cuda_bf16.h) are not found")
    if not hasattr(torch.ops, EMU) or not hasattr(getattr(torch.ops, EMU), "cuda_recurrence_fwd"):
        EMU_BUILD.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(
            name="fusedrnn_cuda_emu",
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
GRID = [(m, v, d) for m, v, d in itertools.product(TORCH_MODES, VARIANTS, DTYPES)
        if not (VARIANTS[v][2] and m != "LSTM")]
