"""The vocabulary every layer shares: value sources, bias forms, variants, modes, numeric constants.

One file, so the Python ops, the Triton kernels (which receive the IntEnum codes as
`tl.constexpr` arguments and compare against them by name) and the module / surgery layers
never spell a code or a choice list twice. The C++ kernels take the strings and map them in
csrc/attention/host.cpp. python_ref keeps its own copies on purpose (it is the independent definition the
tests compare against; a test checks both agree).
"""
from __future__ import annotations

import enum
import math


class ValueSource(enum.IntEnum):
    """Where one part of the value matrix is read from (the value is up to two parts, concatenated)."""

    NONE = 0
    V = 1
    Q = 2  # Armour: the query is (the first part of) the value
    K = 3  # W_K = W_V (shared_kv), or LeViT armour_plus's concat(q, k)


class BiasKind(enum.IntEnum):
    """How a score bias is given: none, dense (broadcastable to (B, H, Nq, Nk)), or the LeViT table."""

    NONE = 0
    DENSE = 1
    TABLE = 2  # (H, R) table read as table[h, index[i, j]]


# The attention op's `value` argument → its (first, second) parts, concatenated along features.
VALUE_PARTS = {
    "v": (ValueSource.V, ValueSource.NONE),
    "q": (ValueSource.Q, ValueSource.NONE),
    "k": (ValueSource.K, ValueSource.NONE),
    "q+v": (ValueSource.Q, ValueSource.V),
    "q+k": (ValueSource.Q, ValueSource.K),
}
VALUE_SOURCES = tuple(VALUE_PARTS)

# DeiT attention variants (docs/attention.md): variant → (value source, key is the query, mask the diagonal).
DEIT_VARIANTS = {
    "regular": ("v", False, False),
    "armour": ("q", False, False),
    "shared_kv": ("k", False, False),
    "shared_qk": ("v", True, False),
    "shared_qk_nodiag": ("v", True, True),
}

# LeViT attention variants (docs/levit.md): variant → the value source of its non-subsampling blocks.
LEVIT_VALUES = {"regular": "v", "armour": "q+v", "armour_plus": "q+k"}

# Nyström / Performer (docs/nystrom.md, docs/performer.md).
LINEAR_ATTENTION_VALUES = ("v", "q")  # "q": the Armour form, the query is the value
MODES = ("seed", "clean")  # seed: batch-wide statistics as the paper's code; clean: per (batch, head)
PERFORMER_KERNELS = ("softmax", "relu")

# The Linear + activation family (docs/linear_act.md): activations the fused layers apply.
ACTIVATIONS = ("none", "hardswish", "relu", "gelu", "gelu_tanh", "silu")


class Activation(enum.IntEnum):
    """The code of each activation in ACTIVATIONS (its index), as the C++ dense op takes it (Act in
    csrc/kernels/kernel_api.h, same order)."""

    NONE = 0
    HARDSWISH = 1
    RELU = 2
    GELU = 3
    GELU_TANH = 4
    SILU = 5

MAX_HEAD_DIM = 256

LOG2E = 1.0 / math.log(2.0)  # the kernels work in exp2: exp(x) = exp2(x·log2 e)
LN2 = math.log(2.0)

__all__ = ["ValueSource", "BiasKind", "VALUE_PARTS", "VALUE_SOURCES", "DEIT_VARIANTS", "LEVIT_VALUES",
           "LINEAR_ATTENTION_VALUES", "MODES", "PERFORMER_KERNELS", "ACTIVATIONS", "Activation", "MAX_HEAD_DIM", "LOG2E", "LN2"]
