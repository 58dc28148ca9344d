"""Build fusedrnn's C++ extensions; the package metadata lives in pyproject.toml.

    pip install torch==2.13.0 ninja      # CPU build; pin it, an unpinned torch pulls CUDA
    pip install --no-build-isolation -e ".[test]"
    python -m build --wheel --no-isolation   # a wheel (torch must be installed: no isolation)

The C++ extension ``fusedrnn._C`` is built from every ``csrc/**/*.cpp`` outside ``csrc/cuda``.
Set ``FUSEDRNN_NO_EXT=1`` to install the pure-Python package only (the reference backend).
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def extensions():
    if os.environ.get("FUSEDRNN_NO_EXT") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as e:  # an isolated build (no --no-build-isolation) has no torch
        raise RuntimeError(
            "building fusedrnn's C++ extension needs torch installed in this environment: "
            "pip install torch==2.13.0 ninja, then build without isolation "
            "(pip install --no-build-isolation ..., python -m build --no-isolation); "
            "or set FUSEDRNN_NO_EXT=1 for the pure-Python package"
        ) from e

    sources = sorted(
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "csrc", "**", "*.cpp"), recursive=True)
        if os.sep + "cuda" + os.sep not in p
    )
    if not sources:
        return [], {}
    ext = CppExtension(
        "fusedrnn._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        extra_compile_args={"cxx": ["-O3", "-std=c++17", "-fopenmp"]},
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    exts = [ext]
    # fusedrnn._C_cuda: the CUDA backend (csrc/cuda: the .cu kernels, the loops and the torch
    # glue), only when torch has CUDA and nvcc is found; otherwise a CPU-only build, no error.
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda and CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        from torch.utils.cpp_extension import CUDAExtension

        cuda_dir = os.path.join(ROOT, "csrc", "cuda")
        cuda_sources = sorted(
            os.path.relpath(p, ROOT)
            for p in glob.glob(os.path.join(cuda_dir, "*.cpp")) + glob.glob(os.path.join(cuda_dir, "*.cu"))
        )
        exts.append(CUDAExtension(
            "fusedrnn._C_cuda",
            cuda_sources,
            include_dirs=[os.path.join(ROOT, "csrc", "include"), cuda_dir],
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
            py_limited_api=False,
        ))
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()

setup(ext_modules=ext_modules, cmdclass=cmdclass)
