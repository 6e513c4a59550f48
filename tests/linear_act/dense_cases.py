"""Inputs and the float64 definition the dense-op tests compare against (test_dense_cpu.py, test_dense_compile.py,
test_dense_norm_cpu.py), and the CPU dispatch paths they run on."""
from __future__ import annotations

import torch

from armour_kernels import cpu
from armour_kernels.ops.linear_act import TORCH_ACTIVATIONS

BRGEMM_TILES = "brgemm-tiles"
ISAS = cpu.supported_isas() if cpu.built() else []  # the dispatch paths the `isa` fixture (conftest.py) runs


def _runs_a_task_kernel(name: str) -> bool:
    with cpu.use_isa(name):
        return any(cpu.dense_task_available(kind) for kind in cpu.DENSE_TASKS)


# The best dispatch path with a dense task kernel runs once more with them off (oneDNN's tiles).
_WITH_TASKS = [name for name in ISAS if _runs_a_task_kernel(name)]
if _WITH_TASKS:
    ISAS = [*ISAS, f"{_WITH_TASKS[-1]}/{BRGEMM_TILES}"]


def expected(x, w, b, act, act_in, residual):
    """The definition, in float64: residual + act(act_in(x) @ wᵀ + b)."""
    x, w = x.double(), w.double()
    if act_in:
        x = torch.nn.functional.hardswish(x)
    y = TORCH_ACTIVATIONS[act](torch.nn.functional.linear(x, w, None if b is None else b.double()))
    return y if residual is None else y + residual.double()


def make(M, K, N, dtype, *, bias=True, residual=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(dtype)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(dtype)
    b = torch.randn(N, generator=g).to(dtype) if bias else None
    r = torch.randn(M, N, generator=g).to(dtype) if residual else None
    return x, w, b, r
