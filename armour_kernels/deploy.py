"""Serving a model: `prepare` it (a frozen copy with every rewrite applied), then run its op graph from C++ or
compile it (`optimize`).

`optimize(model, example_inputs, dtype=...)` returns a model ready to serve:

1. a deep copy in eval mode (the model given is left as it was),
2. the rewrites, all of them in surgery/: LeViT's BatchNorms folded into their projections
   (`fold_batchnorm`, exact, in fp32), the fused modules patched in (`patch`), LeViT's attention
   bias tables gathered once into dense biases and its stem output laid out channels-last
   (surgery/serving.py: contiguous tokens for the GEMMs), a distilled LeViT's two averaged
   classifier heads merged into one GEMM (`merge_distilled_heads`), each DeiT / ViT block's
   LayerNorms and residual adds moved into its projections and its patch embedding made one dense
   GEMM (`fuse_for_serving`: nn/block.py, nn/patch_embed.py). The fused ops are dispatcher
   ops (`armour_kernels::attention`, ...: C++ kernels on CPU) with fake implementations, so
   inductor calls them directly from its generated code (no graph break: it compiles with
   fullgraph=True; no Python on the call),
3. the weights cast once to `dtype` (on the CPU kernels LeViT's gathered attention biases stay
   float32: faster and closer, `cast_keeping_float32_biases`) and frozen (no gradients); on the
   CPU the fused modules' projection weights packed once for the dense op (`pack_dense_layers`, docs/dense.md): those
   layers then run `armour_kernels::dense` — brgemm micro-kernels (AMX for bf16) with the input
   LayerNorm or LeViT's input Hardswish applied per row block, the bias, activation and residual
   add per output tile,
4. on the CPU kernels (runner="auto", static batch): its weights moved onto 2 MB pages
   (armour_kernels/hugepages.py, on Linux), then exported and run by the graph runner
   (armour_kernels/runner.py, docs/serving.md) — C++ calling the ops of the exported graph one
   after the other, no Python between the kernels — for every input signature whose GEMMs all run
   on packed weights; otherwise (layers past a DENSE_MAX_ROWS limit where one is set, CUDA, dynamic_batch,
   runner="inductor"):
5. compiled by torch.compile (inductor) with freezing: parameters become constants, so
   inductor folds them and prepacks every GEMM / convolution weight once (MKL or oneDNN
   layouts on CPU) that remain: the stem convolutions after the first (which reads the NCHW
   image on the `image_conv` op, docs/image_conv.md), the head, and — with pack=False, on
   CUDA, or for calls past a DENSE_MAX_ROWS limit — the dense layers, which the fused modules
   then hand to PyTorch's `F.linear` so that inductor prepacks them and fuses what is around them.
   The example inputs are run once, so the compilation happens here and not at the first request.

The served model takes inputs in any floating dtype and returns outputs in the input's dtype
(the cast to `dtype` is inside the compiled graph). Inductor's generated C++ kernels are built
for the thread count in use when compiling (torch.get_num_threads()): call `optimize` with the
thread count you serve with. The batch size of `example_inputs` is compiled statically; another
batch size compiles again on first use (dynamic_batch=True compiles one graph for every batch
size; the example's batch must then be > 1, as torch.compile specialises sizes 0 and 1).

The same prepared model, exported instead of compiled in process (an AOTInductor package), is
`export_package` in armour_kernels/export.py.
"""
from __future__ import annotations

import copy
import types
import warnings

import torch
import torch.nn as nn

from .surgery import patch
from .surgery.fold import fold_batchnorm
from .surgery.serving import (cast_keeping_float32_biases, channels_last_stem, dense_attention_biases, fuse_for_serving,
                              merge_distilled_heads, pack_dense_layers, static_batch_chunks)

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


def input_tuple(example_inputs) -> tuple:
    """The example inputs as a tuple (one tensor or a tuple / list of them)."""
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def prepare(model: nn.Module, *, dtype: torch.dtype = torch.float32, backend: str = "auto",
            dense_biases: bool = True, pack: bool = True) -> ServingModel:
    """The eager serving model: a deep copy, eval, BatchNorms folded, fused modules patched in,
    LeViT bias tables gathered (`dense_biases`), weights cast to `dtype`, no gradients, and
    (`pack`, CPU) the fused modules' projection weights packed for the CPU dense op.
    `model` is not changed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"armour_kernels.optimize: expected an nn.Module, got {type(model).__name__}")
    if dtype not in SERVING_DTYPES:
        raise ValueError(f"armour_kernels.optimize: dtype must be one of {SERVING_DTYPES}, got {dtype}")
    model = copy.deepcopy(model).eval()
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        fold_batchnorm(model)  # before the cast: the fold is computed in float64, rounded once
    merge_distilled_heads(model)
    patch(model, backend=backend)
    fuse_for_serving(model, backend)
    model.requires_grad_(False)
    if dense_biases:
        dense_attention_biases(model)
    channels_last_stem(model)
    on_cpu_kernels = _cpu_kernels(model, backend)
    model = cast_keeping_float32_biases(model, dtype) if on_cpu_kernels else model.to(dtype)
    if pack and on_cpu_kernels:
        pack_dense_layers(model)
    return ServingModel(model, dtype).eval()


def _cpu_kernels(model: nn.Module, backend: str) -> bool:
    """Whether the served model runs the C++ CPU kernels: the extension is built, the backend is "auto" or
    "cpu" and the weights are on the CPU (then the dense layers get packed weights and the LeViT biases
    stay float32)."""
    from . import cpu
    param = next(model.parameters(), None)
    on_cpu = param is None or param.device.type == "cpu"
    return cpu.built() and backend in ("auto", "cpu") and on_cpu


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


def device_of(model: nn.Module, example: tuple) -> torch.device:
    """Where the model runs: its first tensor input's device, else its parameters'."""
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
    example = input_tuple(example_inputs)
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


RUNNERS = ("auto", "graph", "inductor")


def optimize(model: nn.Module, example_inputs, *, dtype: torch.dtype = torch.float32, backend: str = "auto",
             cpp_wrapper: bool = False, max_autotune: bool = False, dynamic_batch: bool = False,
             inference_tensors: bool = True, pack: bool = True, runner: str = "auto") -> nn.Module:
    """A served copy of `model` ready to run (see the module docstring); `model` is not changed.

    example_inputs: a tensor or a tuple of tensors shaped like the requests (their batch size is
    compiled in unless dynamic_batch=True; with it, use a batch > 1). dtype: torch.float32 or torch.bfloat16 (float16 on GPU).
    backend: the armour_kernels backend of the fused modules ("auto": the C++ kernels on CPU,
    Triton on CUDA). The result runs its frozen graph whether called under torch.inference_mode(),
    torch.no_grad() or with grad mode on (it has no gradients: see OptimizedModel).
    inference_tensors: compile now, too, for inputs created under torch.inference_mode() (Dynamo
    guards them apart from ordinary tensors; ~6 s more for LeViT-128S); False when the requests
    are ordinary tensors, and a first inference-tensor request then compiles.
    pack: the fused modules' dense layers run the CPU dense op on weights packed once (docs/dense.md);
    False leaves them to inductor (prepacked MKL / oneDNN GEMMs, its own epilogue fusion).
    runner: "graph" runs the exported op graph from C++ (armour_kernels/runner.py: no Python between the
    kernels); "inductor" compiles with torch.compile; "auto" (default) takes the graph runner for each
    input signature whose GEMMs all run on packed weights (CPU kernels, pack=True, static batch, neither
    cpp_wrapper nor max_autotune asked for) and inductor otherwise.
    """
    if runner not in RUNNERS:
        raise ValueError(f"armour_kernels.optimize: runner must be one of {RUNNERS}, got {runner!r}")
    example = input_tuple(example_inputs)
    serving = prepare(model, dtype=dtype, backend=backend, pack=pack)
    static_batch_chunks(serving, not dynamic_batch)
    options = inductor_options(device_of(serving, example), cpp_wrapper=cpp_wrapper, max_autotune=max_autotune)

    def inductor(args):
        return compile_frozen(serving, args, options, fullgraph=True, dynamic_batch=dynamic_batch,
                              serving_guards=True, inference_tensors=inference_tensors)

    if runner == "graph" or (runner == "auto" and _graph_runner_serves(serving, backend, example, pack, dynamic_batch,
                                                                      cpp_wrapper, max_autotune)):
        from .hugepages import place_on_hugepages
        from .runner import ServedGraph
        place_on_hugepages(serving)  # the weights on 2 MB pages: fewer TLB misses as a call streams them
        return ServedGraph(serving, example, inductor=inductor if runner == "auto" else None)
    return inductor(example)


def _graph_runner_serves(serving: nn.Module, backend: str, example: tuple, pack: bool, dynamic_batch: bool,
                         cpp_wrapper: bool, max_autotune: bool) -> bool:
    """Whether runner="auto" tries the graph runner: the CPU kernels on packed weights, a static batch, no
    inductor option asked for, and an extension with the runner."""
    from . import cpu
    return (pack and not (dynamic_batch or cpp_wrapper or max_autotune) and _cpu_kernels(serving, backend)
            and all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in example)
            and hasattr(cpu._require(), "GraphRunner"))


__all__ = ["optimize", "RUNNERS", "prepare", "ServingModel", "OptimizedModel", "compile_frozen", "inductor_options"]
