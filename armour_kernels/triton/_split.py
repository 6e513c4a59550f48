"""Split reductions, shared by the Nyström and Performer kernels.

A reduction over a sequence's token blocks (Σ φ(k)ᵀv, A3·v, the backward's dY / dk̃ / dq̃ ...) is
shared by several programs so the GPU has enough of them: the programs are (B·H, splits[,
chunks]) on one flat grid (`_grid.flat_grid`), program (bh, split) reduces its
`blocks_per_split` consecutive token blocks into a partial, and the host sums the partials.
These helpers are that convention, in one place.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._grid import flat_program_id

PROGRAMS_TARGET = 512  # programs per reduction launch before splitting further stops paying
# Launch scalars that change with the batch size, left unspecialised (do_not_specialize) so that a
# new batch size does not compile the kernels again: B·H, and a split reduction's split count and
# blocks per split (both follow B·H).
BATCH_FREE = ["BH"]
SPLIT_FREE = ["BH", "blocks_per_split", "SPLITS"]


def split_sizes(n_blocks: int, programs: int) -> tuple[int, int]:
    """How many programs share one reduction over n_blocks token blocks: (splits, blocks per split)."""
    n_blocks = max(1, n_blocks)
    per_split = triton.cdiv(n_blocks, max(1, min(n_blocks, triton.cdiv(PROGRAMS_TARGET, max(1, programs)))))
    return triton.cdiv(n_blocks, per_split), per_split


@triton.jit
def split_program(H, SPLITS):
    """(bh, split, b, h) of this program on a flat (B·H, SPLITS) grid; bh and b are int64, so
    b·stride and bh·(per-head size) cannot wrap. bh ≥ B·H marks a padding program."""
    pid = flat_program_id()
    bh = pid // SPLITS
    return bh, (pid % SPLITS).to(tl.int32), bh // H, (bh % H).to(tl.int32)


@triton.jit
def split_block(split, blocks_per_split, i, BLOCK_N: tl.constexpr):
    """(first row, rows) of the i-th token block of this program's split."""
    row0 = (split * blocks_per_split + i) * BLOCK_N
    return row0, row0 + tl.arange(0, BLOCK_N)
