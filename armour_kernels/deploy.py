"""Serving a model: `optimize` (a compiled copy, ready to call) and AOTInductor packages.

`optimize(model, example_inputs, dtype=...)` returns a model ready to serve:

1. a deep copy in eval mode (the model given is left as it was),
2. LeViT's BatchNorms folded into their projections (`fold_batchnorm`, exact, in fp32),
   its attention bias tables gathered once into dense biases (`dense_attention_biases`) and its
   stem output laid out channels-last (`channels_last_stem`: contiguous tokens for the GEMMs),
3. the fused modules patched in (`patch`): attention runs as the dispatcher op
   `armour_kernels::attention` (a C++ kernel on CPU), which has a fake implementation, so
   inductor calls it directly from its generated code (no graph break: it compiles with
   fullgraph=True; no Python on the call),
4. the weights cast once to `dtype` and frozen (no gradients),
5. compiled by torch.compile (inductor) with freezing: parameters become constants, so
   inductor folds them and prepacks every GEMM / convolution weight once (MKL or oneDNN
   layouts on CPU). Under compilation the fused modules hand their dense layers to PyTorch's
   `F.linear` / convolutions (ops.linear_act leaves oneDNN to inductor while compiling), which
   is what lets inductor prepack them and fuse the bias, activation and residual around them.
   The example inputs are run once, so the compilation happens here and not at the first request.

The served model takes inputs in any floating dtype and returns outputs in the input's dtype
(the cast to `dtype` is inside the compiled graph). Inductor's generated C++ kernels are built
for the thread count in use when compiling (torch.get_num_threads()): call `optimize` with the
thread count you serve with. The batch size of `example_inputs` is compiled statically; another
batch size compiles again on first use (dynamic_batch=True compiles one graph for every batch
size; the example's batch must then be > 1, as torch.compile specialises sizes 0 and 1).

`export_package(model, example_inputs, path, dtype=...)` writes the same prepared model as an
AOTInductor package (torch.export + torch._inductor.aoti_compile_and_package): a .pt2 file that
runs without the Python model code. `load_package(path)` loads it (importing armour_kernels,
which registers the custom ops the package calls, is what makes a fresh process able to run it).
"""
from __future__ import annotations

import copy
import types
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .fold import fold_batchnorm
from .surgery import patch

SERVING_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class ServingModel(nn.Module):
    """The prepared model behind `optimize` / `export_package`: casts inputs to the weights' dtype
    and outputs back to the input's dtype (inside the compiled graph, where both casts fuse)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x.to(self.dtype))
        return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.to(x.dtype), out)


def _as_tuple(example_inputs) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def prepare(model: nn.Module, *, dtype: torch.dtype = torch.float32, backend: str = "auto",
            dense_biases: bool = True) -> ServingModel:
    """The eager serving model: a deep copy, eval, BatchNorms folded, fused modules patched in,
    LeViT bias tables gathered (`dense_biases`), weights cast to `dtype`, no gradients.
    `model` is not changed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"armour_kernels.optimize: expected an nn.Module, got {type(model).__name__}")
    if dtype not in SERVING_DTYPES:
        raise ValueError(f"armour_kernels.optimize: dtype must be one of {SERVING_DTYPES}, got {dtype}")
    model = copy.deepcopy(model).eval()
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        fold_batchnorm(model)  # before the cast: the fold is computed in float64, rounded once
    patch(model, backend=backend)
    model.requires_grad_(False)
    if dense_biases:
        dense_attention_biases(model)
    channels_last_stem(model)
    return ServingModel(model.to(dtype), dtype).eval()


class ChannelsLastOutput(nn.Module):
    """`inner(x)` laid out channels-last (a no-op when it already is: the fused stem's oneDNN chain)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).contiguous(memory_format=torch.channels_last)


def channels_last_stem(model: nn.Module) -> bool:
    """Make a token-mode LeViT's stem output channels-last, in place; True when it did.

    LeViT (timm `levit_*`, python_ref) turns its stem's (B, C, H, W) output into tokens with
    `x.flatten(2).transpose(1, 2)`. Traced from a contiguous (NCHW) stem output that is a transposed
    view, and every first-stage residual add keeps its strides, so inductor lowers the first stage's
    Linears on it to plain bmm calls — not prepacked, not fused (5 of LeViT-128S's 48 GEMMs). From
    a channels-last stem output the same view is the contiguous token matrix, and the GEMMs are
    prepacked like the others: LeViT-128S at batch 1, 1 thread, Sapphire Rapids, interleaved:
    1.03x (1.01-1.04) in fp32, 1.09x (1.06-1.11) in bf16. The stem's convolutions
    run channels-last anyway (inductor's layout choice; the fused stem's oneDNN chain), so the
    relayout costs nothing. Conv-mode LeViT (`levit_conv_*`, no tokens) is left alone.
    """
    stem = getattr(model, "stem", None)
    if stem is None or isinstance(stem, ChannelsLastOutput) or getattr(model, "use_conv", False):
        return False
    if not any(type(m).__name__ in ("Stem16", "Stem8", "LevitStem") for m in (stem, *stem.modules())):
        return False
    model.stem = ChannelsLastOutput(stem)
    return True


def dense_attention_biases(model: nn.Module) -> int:
    """Gather each fused LeViT attention's bias table once into the dense bias it stands for, in place.

    The fused LeViT attention passes its (H, R) table and (Nq, Nk) index to the kernel, which
    gathers bias[h, index[i, j]] score by score — and checks the index range — on every call.
    For a frozen model the gathered (H, Nq, Nk) bias is a constant (exact: a gather), so the
    served copy carries that instead: the kernel then adds contiguous bias rows (vector adds,
    broadcast over the batch), no index is read or checked, and under torch.compile with
    freezing it is one more folded constant. Measured on the Sapphire Rapids CI-class machine,
    1 thread, batch 1: the attention kernel calls of LeViT-128S take ~0.85 ms instead of ~1.2 ms
    (standalone), about 3% of the optimized model's call; at batch 64 no change (the kernel
    already gathers once per call there). The tables are at most
    a few MB (LeViT-384: H·N² = 6·196² floats in the first stage). Returns how many were gathered.
    """
    from .nn.levit import LevitAttention, LevitAttentionDownsample
    gathered = 0
    for module in model.modules():
        if not isinstance(module, (LevitAttention, LevitAttentionDownsample)):
            continue
        index = getattr(module, "attention_bias_idxs", None)
        if index is None:
            continue
        with torch.no_grad():
            dense = module.attention_biases[:, index].contiguous()
        del module.attention_biases  # the Parameter: a constant buffer takes its place
        module.register_buffer("attention_biases", dense, persistent=False)
        module.attention_bias_idxs = None
        gathered += 1
    return gathered


def inductor_options(device: torch.device, *, cpp_wrapper: bool = False, max_autotune: bool = False) -> dict:
    """The inductor configuration `optimize` compiles with (see the module docstring).

    freezing: weights become constants, folded and prepacked once (fp32: MKL packed GEMMs, the
    fastest of MKL / oneDNN / ATen at LeViT's batch-1 shapes on Sapphire Rapids; bf16: oneDNN
    with bias / activation fused).
    cpp_wrapper: the graph's host code in C++ instead of Python. Measured on the Sapphire Rapids
    CI-class machine (LeViT-128S, batch 1, 1 thread, interleaved, load average ~4): no clear
    difference, ours or timm's (per-round ratio IQR 0.79-1.10x): off by default.
    max_autotune: inductor's C++ GEMM templates (epilogues fused) benchmarked against MKL per
    GEMM at compile time: 1.06x (1.04-1.08) on that machine for LeViT-128S at batch 1, for a
    first compilation of ~2 minutes instead of ~30 s (cached afterwards): off by default, worth
    it for a model compiled once and served long (`armour-bench export --max-autotune`).
    """
    options = {"freezing": True}
    if cpp_wrapper:
        options["cpp_wrapper"] = True
    if max_autotune:
        options["max_autotune"] = True
        if device.type == "cpu":
            options["max_autotune_gemm_backends"] = "CPP,ATEN"
    return options


def _device_of(model: nn.Module, example: tuple) -> torch.device:
    for t in example:
        if isinstance(t, torch.Tensor):
            return t.device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class OptimizedModel(nn.Module):
    """What `optimize` returns: the torch.compile'd serving model, compiled under its inductor options.

    Dynamo reads `torch._inductor.config.freezing` while it traces (parameters become graph
    constants only then) and inductor while it compiles, so the options must be set around the
    call that compiles, not passed to torch.compile (`torch.compile(options={"freezing": True})`
    silently does not freeze, torch 2.11). Setting them around every call costs ~30 µs (any
    change of the inductor config slows Dynamo's next call), so only a call with inputs of a kind
    not seen before — shape, strides, dtype, device, inference tensor or not — runs under them.

    A call that needs no gradient runs as one no-grad call outside inference mode, whatever mode
    the caller is in: under `torch.inference_mode()`, `torch.no_grad()`, or with gradients enabled
    but no input requiring one (the weights never do) the result is the same, and all of them reuse
    the frozen graphs compiled for the example. Without this a first call under inference_mode, or
    with grad mode on, traced a graph of its own — with grad mode on, outside the options, an
    unfrozen one: LeViT-128S at batch 1 ran 3x slower. A call with an input that requires a
    gradient runs as given, under the options (its graph is not frozen: freezing applies to
    inference graphs only). Should Dynamo still compile a graph outside the options (a guard
    this key does not see, e.g. autocast), a warning says so once.
    """

    def __init__(self, model: nn.Module, options: dict, *, fullgraph: bool = True, serving_guards: bool = False):
        super().__init__()
        self.model = model
        self.options = dict(options)
        extra = {"options": {"guard_filter_fn": _serving_guards}} if serving_guards and _GUARD_FILTERS else {}
        # dynamic=None: static shapes unless an input's dimension is marked dynamic (compile_frozen)
        self.compiled = torch.compile(_own_entry_point(model), fullgraph=fullgraph, dynamic=None, **extra)
        self._compiled_for = set()
        self._warned = False

    def forward(self, *args):
        if any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return self._compile_call(args)
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False), torch.no_grad():
                return self._call(args)
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self._call(args)
        return self._call(args)

    def _call(self, args):
        key = tuple((a.shape, a.stride(), a.dtype, a.device, a.is_inference()) if isinstance(a, torch.Tensor) else a
                    for a in args)
        if key not in self._compiled_for:
            out = self._compile_call(args)
            self._compiled_for.add(key)
            return out
        graphs = _GRAPHS_COMPILED["unique_graphs"]
        out = self.compiled(*args)
        if _GRAPHS_COMPILED["unique_graphs"] != graphs and not self._warned:
            self._warned = True
            warnings.warn("armour_kernels.optimize: torch.compile compiled a new graph for this model outside "
                          f"its inductor options {self.options} (a change the model cannot see: autocast, a "
                          "torch function mode, ...); that graph is not frozen and runs slower. Call optimize() "
                          "under the conditions you serve with.", stacklevel=3)
        return out

    def _compile_call(self, args):
        with torch._inductor.config.patch(self.options):
            return self.compiled(*args)


_GUARD_FILTERS = all(hasattr(torch.compiler, name) for name in
                     ("skip_guard_on_all_nn_modules_unsafe", "skip_guard_on_globals_unsafe"))  # else every guard stays


def _serving_guards(entries):
    """Which of Dynamo's guards a served model keeps: those on its inputs (shape, strides, dtype,
    device) and on the global state (grad mode, autocast), not those on its modules or on the module
    globals its Python code read while tracing (the backend policy, the op layer's tables).

    The served model is a private, frozen copy: its weights are constants of the graph, so a change
    to its modules could not reach the graph anyway, and the backend and kernel choices are fixed when
    it compiles. Checking those ~2500 guards cost ~200 µs a call for LeViT-128S (torch.profiler's
    "TorchDynamo Cache Lookup": 247 → 43 µs; ~2% of a batch-1 call on Sapphire Rapids, 1 thread)."""
    modules = torch.compiler.skip_guard_on_all_nn_modules_unsafe(entries)
    module_globals = torch.compiler.skip_guard_on_globals_unsafe(entries)
    return [a and b for a, b in zip(modules, module_globals)]


# Dynamo's count of the graphs it has compiled (a defaultdict: reading it costs a dict lookup).
_GRAPHS_COMPILED = torch._dynamo.utils.counters["stats"]


def _own_entry_point(model: nn.Module):
    """A function calling `model`, with a code object of its own.

    Dynamo keeps compiled graphs per code object, and with freezing each graph is guarded on the
    identity of the module whose weights it holds as constants. Compiling `model` itself would put
    every optimized model of a process (all ServingModels share ServingModel.forward) in one cache:
    each call would test the guards of the models compiled before it (~20 µs each), and past
    torch._dynamo.config.recompile_limit (8) models the next one would silently run eagerly."""
    def serve(*args):
        return model(*args)

    code = serve.__code__.replace(co_name=f"serve_{type(model).__name__}_{id(model):x}")
    return types.FunctionType(code, serve.__globals__, code.co_name, None, serve.__closure__)


def compile_frozen(model: nn.Module, example_inputs, options: dict, *, fullgraph: bool = True,
                   dynamic_batch: bool = False, serving_guards: bool = False,
                   inference_tensors: bool = True) -> OptimizedModel:
    """torch.compile `model` with the inductor `options` (see OptimizedModel) and compile it now on the example.

    dynamic_batch: one graph for every batch size (dimension 0 of the example's tensors symbolic;
    the other dimensions stay static: LeViT's bias tables fix the resolution anyway).
    serving_guards: Dynamo guards only the inputs and the global state (`_serving_guards`).
    inference_tensors: also compile for inputs made under torch.inference_mode() (see below)."""
    compiled = OptimizedModel(model, options, fullgraph=fullgraph, serving_guards=serving_guards)
    example = _as_tuple(example_inputs)
    # Requests made under torch.inference_mode() arrive as inference tensors, which Dynamo guards
    # apart from ordinary ones: compile both kinds now (the second reuses the first's compiled
    # FX graph from inductor's cache, ~6 s for LeViT-128S) rather than at the first such request.
    inference_example = ()
    if inference_tensors:
        with torch.inference_mode():
            inference_example = tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in example)
    if dynamic_batch:
        example = tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in example)  # leave the caller's unmarked
        for t in example + inference_example:
            if isinstance(t, torch.Tensor) and t.shape[0] > 1:
                torch._dynamo.mark_dynamic(t, 0)
    compiled(*example)
    if inference_tensors:
        compiled(*inference_example)
    return compiled


def optimize(model: nn.Module, example_inputs, *, dtype: torch.dtype = torch.float32, backend: str = "auto",
             cpp_wrapper: bool = False, max_autotune: bool = False, dynamic_batch: bool = False,
             inference_tensors: bool = True) -> nn.Module:
    """A compiled copy of `model` ready to serve (see the module docstring); `model` is not changed.

    example_inputs: a tensor or a tuple of tensors shaped like the requests (their batch size is
    compiled in unless dynamic_batch=True; with it, use a batch > 1). dtype: torch.float32 or torch.bfloat16 (float16 on GPU).
    backend: the armour_kernels backend of the fused modules ("auto": the C++ kernels on CPU,
    Triton on CUDA). The result runs its frozen graph whether called under torch.inference_mode(),
    torch.no_grad() or with grad mode on (it has no gradients: see OptimizedModel).
    inference_tensors: compile now, too, for inputs created under torch.inference_mode() (Dynamo
    guards them apart from ordinary tensors; ~6 s more for LeViT-128S); False when the requests
    are ordinary tensors, and a first inference-tensor request then compiles.
    """
    example = _as_tuple(example_inputs)
    serving = prepare(model, dtype=dtype, backend=backend)
    options = inductor_options(_device_of(serving, example), cpp_wrapper=cpp_wrapper, max_autotune=max_autotune)
    return compile_frozen(serving, example, options, fullgraph=True, dynamic_batch=dynamic_batch, serving_guards=True,
                          inference_tensors=inference_tensors)


def export_package(model: nn.Module, example_inputs, path, *, dtype: torch.dtype = torch.float32,
                   backend: str = "auto", dynamic_batch: bool = False, max_autotune: bool = False) -> Path:
    """Write `model`, prepared as for `optimize`, to the AOTInductor package `path` (.pt2); returns the path.

    The package holds the compiled graph and the (folded, cast) weights; the fused attention is a
    call of the registered custom op. Load it with `load_package` (after `import armour_kernels`).
    dynamic_batch: one package for every batch size (dimension 0 of every input) instead of the
    example's.
    """
    example = _as_tuple(example_inputs)
    serving = prepare(model, dtype=dtype, backend=backend)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic_shapes = tuple({0: batch} for _ in example)
    with torch.no_grad():
        program = torch.export.export(serving, example, dynamic_shapes=dynamic_shapes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = _device_of(serving, example)
    torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                             inductor_configs=inductor_options(device, max_autotune=max_autotune))
    return path


def load_package(path):
    """Load an AOTInductor package written by `export_package`: a callable taking the example's inputs."""
    return torch._inductor.aoti_load_package(str(path))


__all__ = ["optimize", "prepare", "export_package", "load_package", "ServingModel", "OptimizedModel",
           "compile_frozen", "inductor_options", "dense_attention_biases", "channels_last_stem", "ChannelsLastOutput"]
