"""Test set-up shared by every folder of tests/ (docs/testing.md has the layout).

On a machine without CUDA the Triton kernels run in the interpreter on CPU tensors
(docs/backends.md), so TRITON_INTERPRET is set before anything imports triton. tests/ goes on
sys.path so that the tests of every family folder import the shared helpers (`from helpers
import ...`, tests/helpers.py) whatever pytest's import mode. Tests that run the C++ extension
are marked `cpu_kernels` (the backend-"cpu" cases of the parametrised tests and the
test_*_cpu.py files): .ci/sanitize runs those against an ASan + UBSan build.
"""
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_kernels: runs the C++ extension's kernels (.ci/sanitize runs these)")


@pytest.hookimpl(tryfirst=True)  # before `-m cpu_kernels` deselects by the markers
def pytest_collection_modifyitems(items):
    for item in items:
        params = getattr(item, "callspec", None)
        backend = params.params.get("backend") if params else None
        if backend == "cpu" or item.path.stem.endswith("_cpu"):
            item.add_marker(pytest.mark.cpu_kernels)


@pytest.fixture
def many_threads():
    """8 threads, more than a small test's (b, h) pairs, so that the C++ kernels split each sequence
    over tasks and merge their partial results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(8)
    yield
    torch.set_num_threads(threads)
