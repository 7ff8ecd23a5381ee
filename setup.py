"""Build fusedrnn and its C++ extension fusedrnn._C.

CPU kernels are always built. CUDA kernels (csrc/cuda/*.cu, *.cpp) are built when torch is a
CUDA build and nvcc is found; FUSEDRNN_CUDA=0/1 forces either. torch must be importable at
build time, so install with `pip install --no-build-isolation -e .`.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    def rel(pattern):
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))

    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    force = os.environ.get("FUSEDRNN_CUDA")
    if force not in (None, "", "0", "1"):
        raise RuntimeError(f"FUSEDRNN_CUDA must be 0 or 1, got {force!r}")
    with_cuda = (torch.version.cuda is not None and CUDA_HOME is not None) if force in (None, "") \
        else force == "1"
    include = [os.path.join(ROOT, "csrc", "include")]
    # -O3 without -march: wheels must run on any x86-64; AVX2/FMA code is dispatched at run time
    # (csrc/cpu/units.h). -fno-trapping-math lets the unit loops' selects vectorize; it changes
    # no value (no fast-math), only the assumption that FP exception flags are observed.
    cxx = ["-O3", "-g0", "-fno-trapping-math"]
    # at::parallel_for is a header template whose OpenMP pragmas only take effect in a TU built
    # with -fopenmp; without it every parallel_for of the kernels (the CPU thread team of
    # csrc/cpu/team.h) runs on one thread. At run time libgomp.so.1 resolves to the copy torch
    # already loaded.
    link = []
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if with_cuda:
        cuda_sources = rel("csrc/cuda/*.cu") + rel("csrc/cuda/*.cpp")
        ext = CUDAExtension(
            "fusedrnn._C", sources + cuda_sources, include_dirs=include,
            define_macros=[("FUSEDRNN_WITH_CUDA", None)],
            extra_link_args=link,
            extra_compile_args={"cxx": cxx,
                                "nvcc": ["-O3", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
                                         "-DFUSEDRNN_WITH_CUDA", "--expt-relaxed-constexpr"]})
    else:
        ext = CppExtension("fusedrnn._C", sources, include_dirs=include, extra_link_args=link,
                           extra_compile_args={"cxx": cxx})
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="fusedrnn",
    version="0.1.0",
    description="Fused LSTM-family recurrent networks (LSTM variants, LN/BN-LSTM, GRU, RNN) for PyTorch",
    packages=find_packages(include=["fusedrnn", "fusedrnn.*"]),
    python_requires=">=3.9",
    install_requires=["torch", "numpy"],
    extras_require={
        "test": ["pytest", "hypothesis", "expecttest", "numpy"],
        "examples": ["matplotlib", "tqdm", "numpy"],
        "bench": ["matplotlib", "tqdm", "numpy"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
