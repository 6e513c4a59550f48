"""Exporting models: an AOTInductor package of the served model, keeping the fused custom ops;
ONNX, a decomposed graph.

- `torch.export.export(model, (x,))` works on a patched model as it is: the fused ops
  (`armour_kernels::attention`, ...) are torch operators with fake implementations, so they appear in the graph as single nodes and run the
  fused kernels when the program runs.
- `export_package(model, example_inputs, path, dtype=...)` writes the model prepared as for
  `optimize` (armour_kernels/deploy.py: folded, patched, cast) as an AOTInductor package
  (torch.export + torch._inductor.aoti_compile_and_package): a .pt2 file that runs without the
  Python model code. `load_package(path)` loads it (importing armour_kernels, which registers the
  custom ops the package calls, is what makes a fresh process able to run it).
- ONNX has no form for those custom ops (no ONNX kernel exists for them), so `to_onnx` exports
  a decomposed graph: it unpatches a copy of the model (the modules `patch` replaced come back,
  with the current weights) and runs any fused module left (one built directly, not by `patch`)
  on its "reference" backend. The attention becomes plain MatMul / Softmax / Gather nodes that
  any ONNX runtime executes; the weights, and so the outputs, are the same, the graph is just
  not fused. The model passed in is not changed.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .backend import BACKENDS
from .deploy import device_of, inductor_options, input_tuple, prepare
from .surgery import unpatch
from .surgery.serving import static_batch_chunks


@contextlib.contextmanager
def decomposed(model: nn.Module):
    """Within the block, every fused module of `model` runs its python_ref ("reference") backend."""
    switched = [(m, m.backend) for m in model.modules()
                if isinstance(getattr(m, "backend", None), str) and m.backend in BACKENDS]
    try:
        for module, _ in switched:
            module.backend = "reference"
        yield model
    finally:
        for module, backend in switched:
            module.backend = backend


def to_onnx(model: nn.Module, example: torch.Tensor, path, *, opset_version: int = 17,
            dynamic_batch: bool = True) -> Path:
    """Export `model` (patched or not) for inference to the ONNX file `path`; returns the path.

    The graph takes one input "input" (shaped like `example`; the batch dimension is dynamic
    unless dynamic_batch=False) and gives "output". Fused attention is exported decomposed (see
    the module docstring). Uses the TorchScript-based exporter, which needs no extra package.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_onnx: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"to_onnx: example must be one input tensor, got {type(example).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = unpatch(copy.deepcopy(model)).eval()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with decomposed(plain), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side input checks
        torch.onnx.export(plain, (example,), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes=axes, opset_version=opset_version, dynamo=False)
    return path


def export_package(model: nn.Module, example_inputs, path, *, dtype: torch.dtype = torch.float32,
                   backend: str = "auto", dynamic_batch: bool = False, max_autotune: bool = False) -> Path:
    """Write `model`, prepared as for `optimize`, to the AOTInductor package `path` (.pt2); returns the path.

    The package holds the compiled graph and the (folded, cast) weights; the fused attention is a
    call of the registered custom op. Load it with `load_package` (after `import armour_kernels`).
    dynamic_batch: one package for every batch size (dimension 0 of every input) instead of the
    example's.
    """
    example = input_tuple(example_inputs)
    serving = prepare(model, dtype=dtype, backend=backend)
    static_batch_chunks(serving, not dynamic_batch)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic_shapes = tuple({0: batch} for _ in example)
    with torch.no_grad():
        program = torch.export.export(serving, example, dynamic_shapes=dynamic_shapes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = device_of(serving, example)
    torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                             inductor_configs=inductor_options(device, max_autotune=max_autotune))
    return path


def load_package(path):
    """Load an AOTInductor package written by `export_package`: a callable taking the example's inputs."""
    return torch._inductor.aoti_load_package(str(path))


__all__ = ["export_package", "load_package", "decomposed", "to_onnx"]
