"""The implementations a user would pick to serve a model, each built as a callable `run(x)`.

    timm eager      the model as PyTorch runs it (LeViT: BatchNorm folded, as for every peer)
    ours eager      patch + fold_batchnorm (armour_kernels.deploy.prepare without the dense
                    bias tables): the fused model as a user runs it eagerly, cast
    timm compile    torch.compile (inductor) with freezing, of the timm model
    ours optimize   armour_kernels.optimize: the above plus torch.compile with freezing
    onnxruntime     the (folded) timm model exported to ONNX, CPU provider, intra-op threads =
                    torch.get_num_threads(), always fp32 (onnxruntime has no fast bf16 CPU path)
    openvino        openvino.convert_model of that ONNX file, compiled for CPU with
                    INFERENCE_PRECISION_HINT set explicitly (f32 or bf16: OpenVINO silently picks
                    bf16 on CPUs with AVX512-BF16 otherwise) and INFERENCE_NUM_THREADS = ours

Every peer is optional: a builder raises `Unavailable` (its package is not installed, or it
does not apply, e.g. onnxruntime on a GPU) and the benchmark writes the reason in the row and
goes on. All take fp32 images and cast inside (`ServingModel`), so the rows compare like with
like at every dtype. Runtime dependencies of armour_kernels these are not: `pip install
armour_kernels[bench]` brings them.
"""
from __future__ import annotations

import importlib
import logging
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from armour_kernels.deploy import ServingModel, compile_frozen, inductor_options, optimize, prepare

INSTALL_HINT = "pip install 'armour_kernels[bench]'"
PRECISION_HINTS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


class Unavailable(Exception):
    """This peer cannot run here; the message says why (shown in the benchmark row)."""


def require(module: str):
    """Import `module`, or raise Unavailable naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise Unavailable(f"{module} not installed ({INSTALL_HINT})") from None


def _cpu_only(name: str, device: torch.device) -> None:
    if device.type != "cpu":
        raise Unavailable(f"{name} is a CPU peer here")


def timm_eager(model: nn.Module, example: torch.Tensor, dtype: torch.dtype):
    """The (folded) model as PyTorch runs it, weights in `dtype`."""
    import copy
    return ServingModel(copy.deepcopy(model).eval().to(dtype).requires_grad_(False), dtype).eval()


def ours_eager(model: nn.Module, example: torch.Tensor, dtype: torch.dtype):
    """`patch` + `fold_batchnorm`, as a user runs the fused model eagerly (the bias tables as they are)."""
    return prepare(model, dtype=dtype, dense_biases=False)


# The benchmarks time ordinary tensors under torch.no_grad(): compiling for inference-tensor inputs
# too would only add compile time.
INFERENCE_TENSORS = False


def quiet_cuda_home_probe() -> None:
    """Import torch.utils.cpp_extension (inductor imports it when it first compiles) with its logger
    at ERROR: on a CUDA build of torch without a GPU it logs "No CUDA runtime is found, using
    CUDA_HOME=..." at import, which says nothing about a CPU run (it is about building CUDA
    extensions, which nothing here does). Its other messages stay as they are."""
    name = "torch.utils.cpp_extension"
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        importlib.import_module(name)
    finally:
        logger.setLevel(level)


def timm_compile(model: nn.Module, example: torch.Tensor, dtype: torch.dtype, dynamic_batch: bool = False):
    """torch.compile (inductor, freezing) of the model as PyTorch runs it; compiled on the example.

    One eager call first: timm's LeViT fills a per-device cache of its attention biases
    (`attention_bias_cache`) at its first eval call. Traced on an empty cache, the graph is guarded
    on the cache being empty, so the next call failed that guard and Dynamo compiled a second,
    unfrozen graph outside the inductor options (optimize's warning, and a slower timm compile row)."""
    quiet_cuda_home_probe()
    serving = timm_eager(model, example, dtype)
    with torch.no_grad():
        serving(example)
    return compile_frozen(serving, example, inductor_options(example.device),
                          fullgraph=False, dynamic_batch=dynamic_batch, inference_tensors=INFERENCE_TENSORS)


def ours_optimize(model: nn.Module, example: torch.Tensor, dtype: torch.dtype, dynamic_batch: bool = False,
                  max_autotune: bool = False):
    quiet_cuda_home_probe()
    return optimize(model, example, dtype=dtype, dynamic_batch=dynamic_batch, max_autotune=max_autotune,
                    inference_tensors=INFERENCE_TENSORS)


class OnnxFile:
    """The model exported once to ONNX (fp32, static shape of the example) in a temporary folder.

    A patched model (or one of python_ref's Armour models) exports decomposed
    (armour_kernels.export.to_onnx): the same weights and outputs, plain ONNX nodes.
    export_s: the seconds the export took (part of both ONNX peers' first-call time)."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        require("onnx")
        from armour_kernels.export import to_onnx
        self._folder = tempfile.TemporaryDirectory(prefix="armour-bench-")
        start = time.perf_counter()
        self.path = to_onnx(model.float().cpu(), example.float().cpu(), Path(self._folder.name) / "model.onnx",
                            dynamic_batch=False)
        self.export_s = time.perf_counter() - start

    def close(self):
        self._folder.cleanup()


def onnxruntime_session(onnx: OnnxFile, example: torch.Tensor, dtype: torch.dtype):
    """onnxruntime's CPU session on the ONNX file; intra-op threads = torch.get_num_threads()."""
    _cpu_only("onnxruntime", example.device)
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle onnxruntime threads spin-wait by default and take the cores from the PyTorch calls timed
    # in between (interleaved): seen 5-10x slower timm rows on 2 cores. Sleeping threads are fair.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx.path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x):
        return session.run(None, {name: x.numpy()})[0]
    return run


def openvino_model(onnx: OnnxFile, example: torch.Tensor, dtype: torch.dtype):
    """OpenVINO's CPU plugin on the ONNX file, precision and threads set explicitly."""
    _cpu_only("openvino", example.device)
    ov = require("openvino")
    if dtype not in PRECISION_HINTS:
        raise Unavailable(f"openvino has no precision hint for {dtype}")
    config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[dtype], "INFERENCE_NUM_THREADS": torch.get_num_threads(),
              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    compiled = ov.Core().compile_model(ov.convert_model(str(onnx.path)), "CPU", config)
    actual = compiled.get_property("INFERENCE_PRECISION_HINT")
    actual = actual.get_type_name() if hasattr(actual, "get_type_name") else str(actual)  # an ov.Type: "f32"
    if actual != PRECISION_HINTS[dtype]:
        raise Unavailable(f"openvino runs {actual}, not {PRECISION_HINTS[dtype]}, on this CPU")
    request = compiled.create_infer_request()

    def run(x):
        return request.infer({0: x.numpy()}, share_inputs=True)
    return run


__all__ = ["Unavailable", "require", "timm_eager", "ours_eager", "timm_compile", "ours_optimize", "OnnxFile",
           "onnxruntime_session", "openvino_model", "INSTALL_HINT",
           "quiet_cuda_home_probe"]
