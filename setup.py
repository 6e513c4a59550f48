"""Builds armour_kernels (with its C++ extension armour_kernels._C) and python_ref.

Install with `pip install --no-build-isolation -e .`: the extension compiles against the
torch already installed (requirements.txt), so build isolation must be off.
"""
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))


# ARMOUR_KERNELS_SANITIZE=1: build with AddressSanitizer + UBSan (see .ci/sanitize, which builds
# into build/sanitize/ and runs the CPU tests with libasan preloaded into python).
SANITIZE = os.environ.get("ARMOUR_KERNELS_SANITIZE", "0") not in ("", "0")
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


def cpu_extension():
    # The kernels are compiled per ISA inside the sources (csrc/isa_*.cpp use #pragma GCC target
    # and are chosen at run time by CPUID), so no -march flag here: the build runs on any x86-64.
    sources = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "**", "*.cpp"), recursive=True))
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
    name="armour_kernels",
    version="0.1.0",
    description="Fused attention kernels for vision transformers: Armour, LeViT, Nyström, Performer",
    packages=find_packages(include=["armour_kernels", "armour_kernels.*", "python_ref", "python_ref.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.5", "numpy"],
    extras_require={"triton": ["triton>=3.1"], "timm": ["timm>=1.0", "torchvision"], "test": ["pytest", "timm", "torchvision"]},
    ext_modules=[cpu_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["armour-bench=armour_kernels.cli:main"]},
)
