"""Build fusedrnn and its C++ extension fusedrnn._C.

CPU kernels are always built. CUDA kernels (csrc/cuda/*.cu, *.cpp) are built when torch is a
CUDA build and nvcc is found; FUSEDRNN_CUDA=0/1 forces either. torch must be importable at
build time, so install with `pip install --no-build-isolation -e .`.
"""
import glob
import os
import subprocess
import sys
import tempfile

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _needed_libs(path):
    """The DT_NEEDED entries of a shared object (readelf comes with the linker's binutils)."""
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


def _shared_libstdcxx_link_args():
    """Link arguments that make the extension use the shared libstdc++ torch runs with.

    Some toolchains link libstdc++ statically into shared objects (seen: the /opt/gcc compiler of a
    GPU machine image). The extension then carries a private copy of the C++ runtime: an ostream
    that libc10 constructs meets the locale facets of the other copy, and every error message that
    formats a number (a tensor's shape) segfaulted instead of raising. A probe library built with
    the same compiler tells; if it does not need libstdc++.so, the library file torch loaded is
    named on the link line, so the extension resolves the C++ runtime to it.
    """
    if not sys.platform.startswith("linux"):
        return []
    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as d:
        src, lib = os.path.join(d, "probe.cpp"), os.path.join(d, "probe.so")
        with open(src, "w") as f:
            f.write("#include <sstream>\n#include <string>\n"
                    "std::string probe(long v) { std::ostringstream s; s << v; return s.str(); }\n")
        try:
            subprocess.run([cxx, "-shared", "-fPIC", src, "-o", lib], capture_output=True, check=True)
            if any(n.startswith("libstdc++.so") for n in _needed_libs(lib)):
                return []
        except (OSError, subprocess.CalledProcessError):
            return []  # no probe possible: leave the toolchain's default
    with open("/proc/self/maps") as maps:  # torch is imported: its libstdc++ is mapped
        loaded = sorted({line.split()[-1] for line in maps if "/libstdc++.so" in line})
    if not loaded:
        raise RuntimeError(f"{cxx} links libstdc++ statically and no shared libstdc++ is loaded to link "
                           "against; build with a compiler that links it dynamically (set CXX)")
    print(f"fusedrnn setup: {cxx} links libstdc++ statically; linking {loaded[0]} instead", file=sys.stderr)
    return [loaded[0]]


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
    link = _shared_libstdcxx_link_args()
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
