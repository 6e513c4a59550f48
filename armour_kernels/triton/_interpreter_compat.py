"""Make the Triton 3.6 interpreter work with NumPy ≥ 2.4 (TRITON_INTERPRET=1 on CPU).

The interpreter holds a scalar kernel argument as a one-element 1-D array and converts it to a
Python int with `int(array)` whenever it is used as an index, e.g. `for k in range(0, K, BLOCK)`.
NumPy 2.4 turned that conversion of a 1-D array into a TypeError ("only 0-dimensional arrays can
be converted to Python scalars"), so every loop over a runtime bound fails in the interpreter.
`ensure()` wraps the interpreter's per-launch tensor patch to convert through `.item()` instead.

Applied only when TRITON_INTERPRET is set at import (Triton itself decides at @triton.jit time
whether a kernel is interpreted, so the variable must be set before the kernels are imported
anyway): a GPU process never touches Triton's internals.
"""
from __future__ import annotations

from ..backend import interpreting as triton_interpreting


def _index(self):
    data = self.handle.data
    return int(data.item()) if data.size == 1 else int(data)


def ensure() -> None:
    try:
        from triton.runtime import interpreter
    except ImportError:  # a Triton without the interpreter: nothing to fix
        return
    original = interpreter._patch_lang_tensor
    if getattr(original, "_armour_index_fix", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", _index)

    patch_lang_tensor._armour_index_fix = True
    interpreter._patch_lang_tensor = patch_lang_tensor


if triton_interpreting():
    ensure()
