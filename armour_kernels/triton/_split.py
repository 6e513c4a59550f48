"""Split reductions, shared by the Nyström and Performer kernels.

A reduction over a sequence's token blocks (Σ φ(k)ᵀv, A3·v, the backward's dY / dk̃ / dq̃ ...) is
shared by several programs so the GPU has enough of them: the grid is (B·H, splits[, chunks]),
program (bh, split) reduces its `blocks_per_split` consecutive token blocks into a partial, and
the host sums the partials. These helpers are that convention, in one place.
"""
from __future__ import annotations

import triton
import triton.language as tl

PROGRAMS_TARGET = 512  # programs per reduction launch before splitting further stops paying


def split_sizes(n_blocks: int, programs: int) -> tuple[int, int]:
    """How many programs share one reduction over n_blocks token blocks: (splits, blocks per split)."""
    per_split = triton.cdiv(n_blocks, max(1, min(n_blocks, triton.cdiv(PROGRAMS_TARGET, programs))))
    return triton.cdiv(n_blocks, per_split), per_split


@triton.jit
def split_program(H):
    """(bh, split, b, h) of this program on a (B·H, splits, ...) grid."""
    bh = tl.program_id(0)
    return bh, tl.program_id(1), bh // H, bh % H


@triton.jit
def split_block(split, blocks_per_split, i, BLOCK_N: tl.constexpr):
    """(first row, rows) of the i-th token block of this program's split."""
    row0 = (split * blocks_per_split + i) * BLOCK_N
    return row0, row0 + tl.arange(0, BLOCK_N)
