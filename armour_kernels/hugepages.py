"""A served model's weights in one block of memory on 2 MB pages (Linux transparent huge pages).

At batch 1 a served model streams its weights once per call: LeViT-128S reads 14 MB (bf16) to
28 MB (fp32) in ~200 tensors, each on its own 4 KB pages. Every page costs a TLB entry and, on a
call that finds them out of cache, a page walk through page tables that are out of cache too. Laid
out one after the other in a mapping the kernel backs with 2 MB pages, the same weights need ~7–14
TLB entries. LeViT-128S at batch 1, 1 thread, Sapphire Rapids, the graph runner's own timing with
a cache eviction between calls: 3.5–4% less per call, fp32 and bf16 alike (docs/serving.md).

`place_on_hugepages(model)` moves, in place, each parameter and buffer that owns its whole storage
into one anonymous mapping (2 MB aligned, `madvise(MADV_HUGEPAGE)`), in module order — the order
a forward pass reads them — and returns the bytes moved. The tensors keep their identity (`set_`),
so modules, an exported program made afterwards and anything holding them see the new memory.
Elsewhere (not Linux, transparent huge pages off) it moves nothing: the pages would be 4 KB ones.
"""
from __future__ import annotations

import ctypes
import mmap
import sys

import torch
import torch.nn as nn

HUGE_PAGE = 2 << 20
ALIGN = 4096  # each tensor starts on its own 4 KB boundary (what the kernels' 64-byte loads need, and more)
MIN_BYTES = 4096  # smaller tensors (biases, norms) stay where they are: a few pages in all
_MADV_HUGEPAGE = 14
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def hugepages_available() -> bool:
    """Whether this process can ask for transparent huge pages: Linux with them set to always or madvise."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open(_THP_SETTING) as f:
            setting = f.read()
    except OSError:
        return False
    return "[never]" not in setting


def _movable(model: nn.Module) -> list[list[torch.Tensor]]:
    """The CPU parameters and buffers that own their whole storage, in module order, grouped by storage:
    tensors that share one (a packed weight that is its weight, where no packing applies) move together."""
    groups: dict[int, list[torch.Tensor]] = {}
    owned = (t for module in model.modules() for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)])
    for t in owned:
        storage = t.untyped_storage()
        if (t.device.type != "cpu" or t.is_sparse or t.is_quantized or not t.is_contiguous()
                or t.storage_offset() != 0 or storage.nbytes() != t.numel() * t.element_size()
                or storage.nbytes() < MIN_BYTES):
            continue
        group = groups.setdefault(storage.data_ptr(), [])
        if all(t is not other for other in group):
            group.append(t)
    return list(groups.values())


def place_on_hugepages(model: nn.Module) -> int:
    """Move `model`'s weights into one 2 MB-page mapping (see the module docstring); bytes moved."""
    if not hugepages_available():
        return 0
    groups = _movable(model)
    sizes = [-(-group[0].untyped_storage().nbytes() // ALIGN) * ALIGN for group in groups]
    total = -(-sum(sizes) // HUGE_PAGE) * HUGE_PAGE
    if total == 0:
        return 0
    mapping = mmap.mmap(-1, total + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    whole = torch.frombuffer(mapping, dtype=torch.uint8)  # keeps the mapping alive as long as any view of it
    start = -whole.data_ptr() % HUGE_PAGE
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.madvise(ctypes.c_void_p(whole.data_ptr() + start), ctypes.c_size_t(total), _MADV_HUGEPAGE) != 0:
        return 0  # refused (an old kernel): the weights stay where they are
    arena = whole[start:start + total]
    offset = 0
    with torch.no_grad():
        for group, size in zip(groups, sizes):
            nbytes = group[0].untyped_storage().nbytes()
            arena[offset:offset + nbytes].copy_(torch.empty(0, dtype=torch.uint8).set_(group[0].untyped_storage()))
            for t in group:  # every tensor of the storage: its bytes were copied once, as a whole
                t.set_(arena.untyped_storage(), (start + offset) // t.element_size(), t.shape, t.stride())
            offset += size
    return offset


__all__ = ["place_on_hugepages", "hugepages_available", "HUGE_PAGE"]
