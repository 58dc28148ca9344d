"""Build the CUDA extension ``fusedrnn._C_cuda`` alone, without setup.py: the fallback of
``tools/gpu_check.sh`` when setup.py's build fails (it builds the C++ CPU extension first, so an
incompatibility there with the GPU image's torch would otherwise cost the CUDA results).

    python tools/gpu_build_cuda.py BUILD_DIR

Compiles ``csrc/cuda/*.cpp, *.cu`` with ``torch.utils.cpp_extension.load`` (ninja when present,
arch from TORCH_CUDA_ARCH_LIST or the visible GPU) and copies the library to
``python/fusedrnn/_C_cuda.so``, where ``fusedrnn.ops.cuda`` imports it. Exit status 0 on success.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    from torch.utils.cpp_extension import load

    build = os.path.abspath(argv[0])
    os.makedirs(build, exist_ok=True)
    cuda_dir = os.path.join(ROOT, "csrc", "cuda")
    sources = sorted(glob.glob(os.path.join(cuda_dir, "*.cpp")) +
                     glob.glob(os.path.join(cuda_dir, "*.cu")))
    # the module name must be _C_cuda: glue.cpp defines PyInit__C_cuda itself
    load(name="_C_cuda", sources=sources, build_directory=build, verbose=True,
         extra_include_paths=[os.path.join(ROOT, "csrc", "include"), cuda_dir],
         extra_cflags=["-O3"], extra_cuda_cflags=["-O3"], is_python_module=False)
    built = os.path.join(build, "_C_cuda.so")
    dest = os.path.join(ROOT, "python", "fusedrnn", "_C_cuda.so")
    shutil.copy(built, dest)
    print(f"gpu_build_cuda: {built} -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
