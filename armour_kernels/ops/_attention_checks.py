"""The attention op's argument checks in Python, for the paths whose kernels are not C++: the
Triton launchers (CUDA, or the interpreter) and the reference. The C++ CPU kernel checks the same
things with the same messages (csrc/attention/host.cpp, csrc/torch_ops/bias_index.h), so a bad argument
raises the same TypeError / ValueError whichever backend would run (tests/attention/test_attention_errors.py).

The LeViT index's range is read once per index tensor and version (check_index_range); inside a
torch.compile'd graph the reference path checks it through the checked_index op.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from ..constants import MAX_HEAD_DIM, VALUE_SOURCES
from ._tensor_checks import check_bnhd


def _check_tensor(name, t, like=None):
    check_bnhd("attention", name, t, like)
    if not 1 <= t.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"attention: head dims from 1 to {MAX_HEAD_DIM} are supported, {name} has {t.shape[-1]}")


def _check_bias(bias, bias_index, q, k):
    batch, nq, heads, _ = q.shape
    nk = k.shape[1]
    if bias_index is not None and bias is None:
        raise ValueError("attention: bias_index needs the bias table (bias=(H, R) tensor)")
    if bias is None:
        return None
    if not isinstance(bias, Tensor) or not bias.is_floating_point():
        raise TypeError(f"attention: bias must be a floating-point tensor, got {getattr(bias, 'dtype', type(bias))}")
    if bias.device != q.device:
        raise TypeError(f"attention: bias is on {bias.device} but q is on {q.device}")
    if bias_index is None:
        try:
            shape = torch.broadcast_shapes(bias.shape, (batch, heads, nq, nk))
        except RuntimeError:
            shape = None
        if shape != (batch, heads, nq, nk):
            raise ValueError(f"attention: bias of shape {tuple(bias.shape)} does not broadcast to "
                             f"(B, H, Nq, Nk) = {(batch, heads, nq, nk)}")
        return None
    if not isinstance(bias_index, Tensor) or bias_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"attention: bias_index must be an int64 tensor, got {getattr(bias_index, 'dtype', bias_index)}")
    if bias.dim() != 2 or bias.shape[0] != heads:
        raise ValueError(f"attention: with bias_index the bias is the (H, R) table, H={heads}; got {tuple(bias.shape)}")
    if tuple(bias_index.shape) != (nq, nk):
        raise ValueError(f"attention: bias_index must be (Nq, Nk) = {(nq, nk)}, got {tuple(bias_index.shape)}")
    if bias_index.device != q.device:
        raise TypeError(f"attention: bias_index is on {bias_index.device} but q is on {q.device}")
    return bias_index  # int32 or int64: the Triton launchers narrow it once per version, python_ref indexes with either


# An index tensor whose range was checked → (its version counter, the table width it was checked against).
_CHECKED_INDICES = WeakTensorKeyDictionary()


def check_index_range(index: Tensor, table_width: int) -> None:
    """ValueError unless every entry of the LeViT index lies in [0, table_width).

    Reading the index costs a pass over Nq·Nk entries (and a device sync on a GPU), so it is done
    once per index tensor and again only after it is modified in place (its version counter moves):
    a module's index is a buffer that never changes. The kernels never read a table out of range.
    """
    key = (index._version, table_width)
    if _CHECKED_INDICES.get(index) == key:
        return
    if index.numel() and (bool(index.min() < 0) or bool(index.max() >= table_width)):
        raise ValueError(f"attention: bias_index has entries outside the table's [0, {table_width})")
    _CHECKED_INDICES[index] = key


@torch.library.custom_op("armour_kernels::checked_index", mutates_args=())
def checked_index(index: Tensor, table_width: int) -> Tensor:
    """A copy of `index` after check_index_range: how the reference backend checks the index inside a
    torch.compile'd graph (the op runs at call time, and its output feeds the table lookup, so the
    check can be neither traced away nor dropped as dead code)."""
    check_index_range(index, table_width)
    return index.clone()


@checked_index.register_fake
def _(index, table_width):
    return torch.empty_like(index)


def range_checked(index: Tensor, table_width: int) -> Tensor:
    """`index` after its range check: eagerly once per version, inside a compiled graph as checked_index."""
    if torch.compiler.is_compiling():
        return checked_index(index, table_width)
    check_index_range(index, table_width)
    return index


def check_scale(scale, q) -> float:
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    if not math.isfinite(scale):
        raise ValueError(f"attention: scale must be a finite number, got {scale}")
    return scale


def check(q, k, v, value, bias, bias_index):
    """TypeError / ValueError unless the inputs make an attention call (the index range aside)."""
    if value not in VALUE_SOURCES:
        raise ValueError(f"attention: value must be one of {VALUE_SOURCES}, got {value!r}")
    _check_tensor("q", q)
    _check_tensor("k", k, like=q)
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} must agree in B, H and D")
    if "v" in value:
        if v is None:
            raise ValueError(f"attention: value={value!r} needs v")
        _check_tensor("v", v, like=q)
        if v.shape[:3] != k.shape[:3]:
            raise ValueError(f"attention: v {tuple(v.shape)} must match k {tuple(k.shape)} in B, N and H")
    elif v is not None:
        raise ValueError(f"attention: v is given but value={value!r} does not use it")
    if "q" in value and q.shape[1] != k.shape[1]:
        raise ValueError(f"attention: value={value!r} needs as many queries as keys, got Nq={q.shape[1]}, "
                         f"Nk={k.shape[1]}")
    return _check_bias(bias, bias_index, q, k)
