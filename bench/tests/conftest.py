"""Test set-up of the armour_bench tests: `python -m pytest -q bench/tests`, after the library's
suite (`tests/`), which never imports armour_bench.

They check that each `armour-bench` subcommand runs end to end on tiny inputs and writes its
report, and the timing and reporting helpers — not speed (docs/benchmarks.md). As in the
library's suite, without CUDA the Triton kernels run in the interpreter, so the switch is set
before anything imports triton.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
