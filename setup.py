"""Builds the C++ extension armour_kernels._C; the package's metadata is in pyproject.toml.

torch is needed to compile the extension, not to package it: without torch the sdist and the
metadata are still made, and only building the extension stops, with an error saying what to do.
build_backend/armour_build.py gives an isolated build the torch the package will run with.
"""
import glob
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    BuildExtension = CppExtension = None

HERE = os.path.dirname(os.path.abspath(__file__))

# ARMOUR_KERNELS_SANITIZE=1: build with AddressSanitizer + UBSan (see .ci/sanitize, which builds
# into build/sanitize/ and runs the CPU tests with libasan preloaded into python).
SANITIZE = os.environ.get("ARMOUR_KERNELS_SANITIZE", "0") not in ("", "0")
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


class TorchMissing(build_ext):
    def run(self):
        raise RuntimeError("building armour_kernels._C needs torch: `pip install torch` first and then "
                           "`pip install --no-build-isolation .`, or let pip build in isolation (`pip install .`)")


def cpu_extension():
    # The kernels are compiled per ISA inside the sources (csrc/isa/isa_*.cpp use #pragma GCC target
    # and are chosen at run time by CPUID), so no -march flag here: the build runs on any x86-64.
    sources = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "**", "*.cpp"), recursive=True))
    if CppExtension is None:  # packaging only (sdist, metadata): TorchMissing stops a compile
        return Extension("armour_kernels._C", sources)
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    link = ["-fopenmp"]
    if SANITIZE:
        cxx = ["-O1", "-g", "-std=c++17", "-fopenmp"] + SANITIZE_FLAGS
        link = link + SANITIZE_FLAGS
    return CppExtension(
        "armour_kernels._C",
        sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
    )


setup(
    ext_modules=[cpu_extension()],
    cmdclass={"build_ext": TorchMissing if BuildExtension is None else BuildExtension.with_options(use_ninja=True)},
)
