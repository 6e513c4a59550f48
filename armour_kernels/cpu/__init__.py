"""Host side of the C++ extension armour_kernels._C (CPU kernels, AVX2 / AVX-512)."""
from __future__ import annotations

try:
    from .. import _C
except ImportError:  # not built: every CPU op reports itself missing, with a clear error upstream
    _C = None


def has_op(name: str) -> bool:
    return _C is not None and hasattr(_C, name)
