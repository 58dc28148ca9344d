"""Build and install fusedrnn.

    pip install torch==2.13.0            # CPU build; pin it, an unpinned torch pulls CUDA
    pip install --no-build-isolation -e ".[test]"

The C++ extension ``fusedrnn._C`` is built from every ``csrc/**/*.cpp`` outside ``csrc/cuda``.
Set ``FUSEDRNN_NO_EXT=1`` to install the pure-Python package only (the reference backend).
"""

import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def extensions():
    if os.environ.get("FUSEDRNN_NO_EXT") == "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

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

setup(
    name="fusedrnn",
    version="0.1.0",
    description="Fused recurrent-network kernels: drop-in RNN, LSTM, GRU for PyTorch",
    package_dir={"": "python"},
    packages=find_packages("python"),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        # onnx*: tests/test_onnx.py exports to ONNX and runs the graph in onnxruntime
        "test": ["pytest", "pytest-benchmark", "expecttest", "hypothesis",
                 "onnx", "onnxruntime", "onnxscript"],
        "bench": ["matplotlib", "tqdm", "pytest-benchmark", "onnx", "onnxruntime", "onnxscript"],
        "triton": ["triton"],
        "examples": ["matplotlib", "statsmodels"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["fusedrnn-bench=fusedrnn.bench:main"]},
)
