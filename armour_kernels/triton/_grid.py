"""Launch grids inside CUDA's limits, and each program's flat index.

CUDA allows 2**31 − 1 blocks along grid axis 0 and 65535 along axes 1 and 2. Every kernel of
this backend enumerates its programs as one flat index (over (row block, batch·head), (split,
batch·head), …) and launches `flat_grid(programs)`: all of them on axis 0 when they fit, which
is every realistic size (B·H = 2**24 attention heads of 127 row blocks still do), else as
rows of axis 0 stacked along axis 1. The index is int64, so what is derived from it (b·stride,
bh·N) cannot wrap; the few padding programs of a stacked grid return at once.
"""
from __future__ import annotations

import triton
import triton.language as tl

MAX_GRID_X = 2 ** 31 - 1
MAX_GRID_YZ = 65535


def flat_grid(programs: int) -> tuple[int, int]:
    """(x, y) with x·y ≥ programs, x < 2**31, y ≤ 65535, and fewer than y padding programs."""
    rows = max(1, triton.cdiv(programs, MAX_GRID_X))
    if rows > MAX_GRID_YZ:
        raise ValueError(f"{programs} programs exceed what one CUDA launch can address")
    return triton.cdiv(programs, rows), rows


@triton.jit
def flat_program_id():
    """This program's flat index (int64) on a `flat_grid`."""
    return tl.program_id(1).to(tl.int64) * tl.num_programs(0) + tl.program_id(0)
