"""PEP 517 build backend: setuptools', plus torch pinned to the torch the package will run with.

The C++ extension armour_kernels._C links against libtorch, whose C++ ABI changes from one torch
release to the next: built against one torch, it does not import with another (undefined
symbols, and the CPU backend then reports itself missing). With build isolation (plain
`pip install .`) pip builds in a fresh environment and would put the newest torch there, whatever
torch the environment being installed into has. So when pip asks for the build requirements of a
wheel, this backend looks up the torch installed in that environment and asks for the same
release; with no torch there it asks for `torch>=2.5`, and pip installs the newest in both places.

`pip install --no-build-isolation .` skips all this and builds against the torch already
installed (README: Install). The sdist needs no torch.
"""
from __future__ import annotations

import os
import subprocess
import sys

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every hook this module does not override)

MIN_TORCH = (2, 5)
TORCH_ANY = f"torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}"


def installed_torch_version() -> str | None:
    """The torch version of the environment pip installs into, or None when it has no torch.

    pip runs this hook with that environment's interpreter (sys.executable) but hides its
    site-packages through PYTHONPATH (a sitecustomize) and PYTHONNOUSERSITE; an interpreter
    started without them sees the environment as it is.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    probe = "import importlib.metadata as m; print(m.version('torch'))"
    try:
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def torch_requirement(version: str | None) -> str:
    """`torch==<release>` for an installed torch this package supports, else `torch>=2.5`.

    The local label (+cpu, +cu128) is dropped: pip then takes the same build where it can find
    it and the same release otherwise, whose C++ ABI is the same for a CPU extension.
    """
    if not version:
        return TORCH_ANY
    release = version.split("+", 1)[0]
    try:
        major, minor = (int(part) for part in release.split(".")[:2])
    except ValueError:
        return TORCH_ANY
    return f"torch=={release}" if (major, minor) >= MIN_TORCH else TORCH_ANY


def get_requires_for_build_wheel(config_settings=None):
    return _setuptools.get_requires_for_build_wheel(config_settings) + [torch_requirement(installed_torch_version())]


def get_requires_for_build_editable(config_settings=None):
    return _setuptools.get_requires_for_build_editable(config_settings) + [torch_requirement(installed_torch_version())]
