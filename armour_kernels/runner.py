"""The serving graph runner: a prepared model exported by torch.export and run op by op from C++.

Why: once every layer of a served model is one of the fused ops, what is left between the kernels
is the host code that calls them. Inductor's Python wrapper spends ~6-9 µs around each op call
(boxing the arguments from Python, size and alignment asserts, views made in Python): ~0.65 ms of
a ~3.4 ms LeViT-128S bf16 call at batch 1. `GraphRunner` (csrc/runtime/graph_runner.cpp) runs the
same op graph from C++: each step pushes its arguments onto a reused stack and calls the operator
through the dispatcher (~0.3 µs for a view).

`lower(model, example)` exports the model (static shapes: the example's), rewrites what the eager
graph leaves unfused — a convolution followed by Hardswish becomes oneDNN's convolution with the
activation as a post-op, on a weight reordered once (what inductor's freezing passes do) — and
numbers the values: every node's result gets a slot, freed after its last use; weights and other
constants are converted once. `ServedGraph` is `optimize()`'s result on this path: one runner per
input signature (shape, dtype, device), a new signature exported on its first call.

A graph the runner cannot run (a node that is not an operator: symbolic sizes, Python calls)
raises UnsupportedGraph; `optimize` then compiles with inductor instead.
"""
from __future__ import annotations

import enum
import operator

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from .constants import Activation


class ArgKind(enum.IntEnum):
    """How a step's argument is given (csrc/runtime/graph_runner.cpp's ArgKind)."""
    CONSTANT = 0
    SLOT = 1
    TENSOR_LIST = 2
    OPTIONAL_TENSOR_LIST = 3


class UnsupportedGraph(RuntimeError):
    """The exported graph has a node the graph runner cannot run."""


# GEMMs and convolutions that ATen runs on unpacked weights (what inductor's freezing would prepack).
_PLAIN_GEMMS = {torch.ops.aten.linear.default, torch.ops.aten.addmm.default, torch.ops.aten.mm.default,
                torch.ops.aten.bmm.default, torch.ops.aten.matmul.default, torch.ops.aten.conv2d.default,
                torch.ops.aten.convolution.default}

# Nodes that only check the trace (no value used by the graph).
_TRACE_CHECKS = ("aten::_assert_tensor_metadata", "aten::_assert_scalar", "aten::sym_constrain_range_for_size")


def _runner_class():
    from .cpu import _require
    return _require().GraphRunner


class _Lowering:
    """Numbers an exported graph's values and writes the runner's steps (see the module docstring)."""

    def __init__(self, exported):
        self.exported = exported
        self.slot_of: dict[torch.fx.Node, int] = {}
        self.constant_of: dict[torch.fx.Node, object] = {}
        self.steps: list[list] = []
        self.step_reads: list[list[int]] = []  # the slots each step reads
        self.returns_of: dict[torch.fx.Node, list[int]] = {}  # a step's outs list, by node (getitem fills it)
        self.fused_into: dict[torch.fx.Node, torch.fx.Node] = {}  # a Hardswish node -> the convolution that applies it
        self.num_slots = 0
        self.inputs: list[int] = []
        self.plain_gemms: list[str] = []  # GEMM / convolution nodes left on ATen (weights not prepacked)
        self.constant_slot: dict[torch.fx.Node, int] = {}  # constants a tensor list takes beside computed values

    def new_slot(self) -> int:
        self.num_slots += 1
        return self.num_slots - 1

    def run(self):
        from torch.export.graph_signature import InputKind, OutputKind
        specs = {spec.arg.name: spec for spec in self.exported.graph_signature.input_specs}
        if any(spec.kind != OutputKind.USER_OUTPUT for spec in self.exported.graph_signature.output_specs):
            raise UnsupportedGraph("the graph mutates a buffer or an input")
        for node in self.exported.graph.nodes:
            if node.op == "placeholder":
                spec = specs[node.name]
                if spec.kind == InputKind.USER_INPUT:
                    self.slot_of[node] = self.new_slot()
                    self.inputs.append(self.slot_of[node])
                elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                    state = self.exported.state_dict if spec.target in self.exported.state_dict else \
                        self.exported.constants
                    self.constant_of[node] = state[spec.target]
                else:
                    raise UnsupportedGraph(f"input {node.name}: {spec.kind} inputs are not supported")
            elif node.op == "get_attr":
                self.constant_of[node] = _attribute(self.exported.graph_module, node.target)
            elif node.op == "call_function":
                self.call(node)
            elif node.op == "output":
                leaves = pytree.tree_leaves(node.args[0])  # flat: the model's own structure is the call spec's
                if not all(isinstance(leaf, torch.fx.Node) and leaf in self.slot_of for leaf in leaves):
                    raise UnsupportedGraph("the graph returns a value that is not a computed tensor")
                self.outputs = [self.slot_of[leaf] for leaf in leaves]
            else:
                raise UnsupportedGraph(f"node {node.name}: {node.op} nodes are not supported")
        self.free_after_last_use()

    def call(self, node: torch.fx.Node):
        target = node.target
        if node in self.fused_into:  # a Hardswish the convolution before it applies
            self.slot_of[node] = self.slot_of[self.fused_into[node]]
            return
        if target is operator.getitem:
            return self.item(node)
        if not isinstance(target, torch._ops.OpOverload):
            raise UnsupportedGraph(f"node {node.name}: {target} is not an operator")
        schema = target._schema
        if schema.name in _TRACE_CHECKS or (not node.users and not _mutates(schema)):
            return  # a check, or a value nothing reads
        if target is torch.ops.aten.dropout.default and node.args[2] is False:
            self.alias(node, node.args[0])  # eval-mode dropout is its input
            return
        if _cast_read_by_image_conv(node):  # image_conv reads the float32 image and rounds as it reads
            self.alias(node, node.args[0])
            return
        conv = _conv_with_activation(node, self.constant_of)
        linear = _linear_on_dense_op(node, self.constant_of)
        view = _unflatten_as_view(node)
        if conv is not None:
            node, target, arguments, fused = conv
            if fused is not None:
                self.fused_into[fused] = node
        elif linear is not None:
            target, arguments = linear
        elif view is not None:
            target, arguments = view
        else:
            target, arguments = _scalar_overload(node, target, _schema_arguments(node))
            if target in _PLAIN_GEMMS:
                self.plain_gemms.append(node.name)
        args = [self.encode(node, argument, value) for argument, value in arguments]
        if _foldable(node, target) and all(kind == ArgKind.CONSTANT for kind, _ in args):
            # Only constants in (a weight's cast or view, zeros): computed once, here.
            with torch.no_grad():
                positional = [value for (argument, _), (_, value) in zip(arguments, args) if not argument.kwarg_only]
                keywords = {argument.name: value for (argument, _), (_, value) in zip(arguments, args)
                            if argument.kwarg_only}
                self.constant_of[node] = target(*positional, **keywords)
            return
        outs = [-1] * len(target._schema.returns)
        if len(outs) == 1:
            outs[0] = self.slot_of[node] = self.new_slot()
        self.returns_of[node] = outs
        name, overload = target._schema.name, target._overloadname
        self.add_step([node.name, name, "" if overload == "default" else overload, args, outs, []])

    def alias(self, node: torch.fx.Node, source: torch.fx.Node):
        if source in self.constant_of:
            self.constant_of[node] = self.constant_of[source]
        else:
            self.slot_of[node] = self.slot_of[source]

    def item(self, node: torch.fx.Node):
        source, index = node.args
        if source in self.constant_of:  # an item of a folded value
            self.constant_of[node] = self.constant_of[source][index]
            return
        outs = self.returns_of.get(source)
        if outs is None:
            raise UnsupportedGraph(f"node {node.name}: an item of {source.name}, which the runner did not compute")
        if len(outs) > 1:  # one of several returns: the step stores it
            outs[index] = self.slot_of[node] = self.new_slot()
            return
        # an item of a returned list (split, unbind): a step of its own
        self.slot_of[node] = self.new_slot()
        self.add_step([node.name, "", "", [(int(ArgKind.SLOT), self.slot_of[source])], [self.slot_of[node]], [],
                       int(index)])

    def add_step(self, step: list):
        reads = []
        for kind, payload in step[3]:
            if kind == ArgKind.SLOT:
                reads.append(payload)
            elif kind in (ArgKind.TENSOR_LIST, ArgKind.OPTIONAL_TENSOR_LIST):
                reads.extend(s for s in payload if s >= 0)
        self.steps.append(step)
        self.step_reads.append(reads)

    def encode(self, node, argument, value):
        """(ArgKind, payload) of one argument value of `node`."""
        if isinstance(value, torch.fx.Node):
            if value in self.constant_of:
                return int(ArgKind.CONSTANT), self.constant_of[value]
            if value not in self.slot_of:
                raise UnsupportedGraph(f"node {node.name}: argument {argument.name} ({value.name}) has no value")
            return int(ArgKind.SLOT), self.slot_of[value]
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.fx.Node) for v in value):
            if all(v is None or (isinstance(v, torch.fx.Node) and v in self.constant_of) for v in value):
                return int(ArgKind.CONSTANT), [None if v is None else self.constant_of[v] for v in value]
            kind = {"List[Tensor]": ArgKind.TENSOR_LIST, "List[Optional[Tensor]]": ArgKind.OPTIONAL_TENSOR_LIST}.get(
                str(argument.type))
            if kind is None:
                raise UnsupportedGraph(f"node {node.name}: argument {argument.name} ({argument.type}) takes "
                                       "computed values in a list the runner cannot pass")
            return int(kind), [-1 if v is None else self.list_slot(node, v) for v in value]
        return int(ArgKind.CONSTANT), value

    def list_slot(self, node: torch.fx.Node, value) -> int:
        """The slot of a tensor list's item: a computed value's, or a constant's own (set at each run)."""
        if isinstance(value, torch.fx.Node) and value in self.slot_of:
            return self.slot_of[value]
        if isinstance(value, torch.fx.Node) and isinstance(self.constant_of.get(value), torch.Tensor):
            if value not in self.constant_slot:
                self.constant_slot[value] = self.new_slot()
            return self.constant_slot[value]
        raise UnsupportedGraph(f"node {node.name}: a list item the runner cannot pass ({value})")

    def free_after_last_use(self):
        """Each slot cleared by the step that reads it last (outputs and inputs are the caller's)."""
        kept = set(self.outputs) | set(self.inputs) | set(self.constant_slot.values())
        last = {}
        for index, reads in enumerate(self.step_reads):
            for slot in reads:
                last[slot] = index
        for index, step in enumerate(self.steps):  # a value nothing reads is freed where it is made
            for slot in step[4]:
                if slot >= 0 and slot not in last:
                    last[slot] = index
        for slot, index in last.items():
            if slot not in kept:
                self.steps[index][5].append(slot)


def _attribute(gm: nn.Module, target: str):
    value = gm
    for name in target.split("."):
        value = getattr(value, name)
    return value


def _mutates(schema) -> bool:
    return any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)


def _foldable(node: torch.fx.Node, target) -> bool:
    """Whether a call on constants can be computed once at lowering: it and its readers write nothing, it
    draws no random numbers and returns only tensors."""
    schema = target._schema
    if _mutates(schema) or torch.Tag.nondeterministic_seeded in target.tags:
        return False
    if not all(str(r.type) == "Tensor" for r in schema.returns):
        return False
    return not any(isinstance(user.target, torch._ops.OpOverload) and _mutates(user.target._schema)
                   for user in node.users)


def _schema_arguments(node: torch.fx.Node) -> list:
    """[(schema argument, value)] of a call, every argument positional (defaults filled in)."""
    out = []
    for i, argument in enumerate(node.target._schema.arguments):
        if not argument.kwarg_only and i < len(node.args):
            value = node.args[i]
        elif argument.name in node.kwargs:
            value = node.kwargs[argument.name]
        elif argument.has_default_value():
            value = argument.default_value
        else:
            raise UnsupportedGraph(f"node {node.name}: no value for argument {argument.name}")
        out.append((argument, value))
    return out


def _scalar_overload(node: torch.fx.Node, target, arguments: list):
    """A Python number given for a Tensor argument (x / 2 traces as div.Tensor(x, 2)): the op's Scalar
    overload, which takes it as is (a boxed call cannot make the wrapped-number tensor Python's binding does)."""
    if not any(str(a.type) == "Tensor" and isinstance(v, (int, float, bool)) for a, v in arguments):
        return target, arguments
    scalar = getattr(target.overloadpacket, "Scalar", None)
    if scalar is None or len(scalar._schema.arguments) != len(arguments):
        raise UnsupportedGraph(f"node {node.name}: {target} takes a number for a tensor and has no Scalar overload")
    return scalar, [(a, v) for a, (_, v) in zip(scalar._schema.arguments, arguments)]


def _conv_with_activation(node: torch.fx.Node, constants: dict):
    """A 2-D convolution on constant weights as oneDNN's pointwise convolution, its weight reordered once for
    the input's size, and the Hardswish after it (when the convolution is its only input's only reader) as
    the post-op: (node, op, [(argument, value)], the Hardswish node or None), or None when it does not apply."""
    if node.target is not torch.ops.aten.conv2d.default or not torch.backends.mkldnn.is_available():
        return None
    # the eager CPU chain's own helpers (cpu/linear_act.py): whether oneDNN runs the dtype on this CPU (no
    # bfloat16 on AVX2-only CPUs), the weight reordered for this input size, the bias cast, the activation
    # as oneDNN's post-op
    from .cpu.linear_act import ONEDNN_ACTIVATIONS, available, cast_once, packed_conv_weight
    x, weight, bias, stride, padding, dilation, groups = [v for _, v in _schema_arguments(node)]
    value = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
    if (weight not in constants or (bias is not None and bias not in constants) or value is None
            or value.dim() != 4 or not available(value.dtype) or groups != 1
            or list(dilation) != [1, 1] or isinstance(padding, str)
            or not value.is_contiguous(memory_format=torch.channels_last)):
        return None
    packed = packed_conv_weight(constants[weight], value.dtype, stride, padding, value.shape)
    b = None if bias is None else cast_once(constants[bias], value.dtype)
    users = list(node.users)
    fused = users[0] if len(users) == 1 and users[0].target is torch.ops.aten.hardswish.default else None
    attr, algorithm = ONEDNN_ACTIVATIONS["none" if fused is None else "hardswish"]
    op = torch.ops.mkldnn._convolution_pointwise.default
    values = [x, packed, b, list(padding), list(stride), [1, 1], 1, attr, [], algorithm]
    return node, op, list(zip(op._schema.arguments, values)), fused


def _unflatten_as_view(node: torch.fx.Node):
    """aten.unflatten as aten.view to the traced output shape: (op, [(argument, value)]), or None.

    Splitting a dimension is always a view, and a served graph's shapes are static, so the result is the
    same tensor; but unflatten is a composite op that reaches view through three more dispatcher calls
    (LeViT-128S bf16, batch 1: 4.6 µs per step against view's 1.3, 13 steps per call)."""
    value = node.meta.get("val")
    if (node.target is not torch.ops.aten.unflatten.int or not isinstance(value, torch.Tensor)
            or not all(isinstance(d, int) for d in value.shape)):
        return None
    op = torch.ops.aten.view.default
    return op, list(zip(op._schema.arguments, [node.args[0], list(value.shape)]))


def _linear_on_dense_op(node: torch.fx.Node, constants: dict):
    """F.linear on a constant weight (a classifier head, a layer the fused modules left to PyTorch) as the
    dense op on the weight packed once, where the dense op serves its dtype and row count
    (plan.dense_takes_rows, the rule linear_act's plan follows too): (op, [(argument, value)]), or None."""
    if node.target is not torch.ops.aten.linear.default:
        return None
    from .ops.linear_act import dense_pack
    from .plan import dense_takes_rows
    x, weight, bias = [v for _, v in _schema_arguments(node)]
    value = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
    if (weight not in constants or (bias is not None and bias not in constants) or value is None
            or value.dtype not in (torch.float32, torch.bfloat16) or constants[weight].dtype != value.dtype
            or not dense_takes_rows(value.dtype, tuple(value.shape))):
        return None
    w = constants[weight]
    b = None if bias is None else constants[bias].detach().to(value.dtype)
    op = torch.ops.armour_kernels.dense.default
    values = [x, dense_pack(w), b, None, int(Activation.NONE), False, w.shape[0], None, None, None]
    return op, list(zip(op._schema.arguments, values))


def _bf16_cast(node: torch.fx.Node) -> bool:
    """x.to(torch.bfloat16) as export writes it (aten.to.dtype, or _to_copy with only a dtype), nothing else
    asked of it (no copy=True, memory format or non_blocking)."""
    if node.target is torch.ops.aten.to.dtype:
        return len(node.args) == 2 and node.args[1] == torch.bfloat16 and not node.kwargs
    if node.target is torch.ops.aten._to_copy.default:
        return len(node.args) == 1 and node.kwargs == {"dtype": torch.bfloat16}
    return False


def _readers(node: torch.fx.Node) -> list:
    """The nodes that use `node`'s value (trace checks do not)."""
    return [u for u in node.users if not (isinstance(u.target, torch._ops.OpOverload)
                                          and u.target._schema.name in _TRACE_CHECKS)]


# Ops that cut a tensor without reading its values: a cast before them can as well come after them.
_CUTS = (torch.ops.aten.split.Tensor, torch.ops.aten.split_with_sizes.default, torch.ops.aten.slice.Tensor,
         torch.ops.aten.narrow.default, operator.getitem)


def _read_as_image_only(node: torch.fx.Node) -> bool:
    """Whether every reader of `node`'s value takes it as the image_conv op's image and nothing else:
    directly, or through more bf16 casts and cuts of the batch (a static batch's image chunks)."""
    image_conv = torch.ops.armour_kernels.image_conv.default
    readers = _readers(node)

    def takes_as_image(user: torch.fx.Node) -> bool:
        if user.args[0] is not node or node in user.args[1:] or node in user.kwargs.values():
            return False
        return user.target is image_conv or ((_bf16_cast(user) or user.target in _CUTS) and _read_as_image_only(user))

    return bool(readers) and all(takes_as_image(user) for user in readers)


def _cast_read_by_image_conv(node: torch.fx.Node) -> bool:
    """A float32 → bfloat16 cast (the served model's input cast, possibly followed by more bf16 casts, which
    are no-ops, and by the static batch's cut into image chunks) whose value only the image_conv op reads,
    as its image: that op reads the float32 image and rounds each value to bfloat16 as it reads it, bit for
    bit the cast's result, so the runner passes it the float32 image (cut the same way) and the cast's pass
    over memory goes."""
    if getattr(torch.ops.armour_kernels, "image_conv", None) is None or not _bf16_cast(node):
        return False
    source = node.args[0]
    value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
    if value is None or value.dtype not in (torch.float32, torch.bfloat16) or value.device.type != "cpu":
        return False
    return _read_as_image_only(node)


def _check_signature_arguments(args: tuple):
    for a in args:
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"armour_kernels.optimize: the served model takes tensors, got {type(a).__name__}")


class Graph:
    """One input signature's runner: call with the flat input tensors."""

    def __init__(self, model: nn.Module, example: tuple):
        _check_signature_arguments(example)
        with torch.no_grad():
            exported = torch.export.export(model, tuple(example), strict=False)
        lowering = _Lowering(exported)
        lowering.run()
        self.out_spec = exported.call_spec.out_spec
        self.plain_gemms = lowering.plain_gemms
        constant_slots = [(slot, lowering.constant_of[node]) for node, slot in lowering.constant_slot.items()]
        self.runner = _runner_class()(lowering.steps, lowering.num_slots, lowering.inputs, lowering.outputs,
                                      constant_slots)

    def step_times(self, args: tuple, calls: int = 20) -> list[tuple[str, str, float]]:
        """[(graph node, operator, median µs)] of each step over `calls` runs on `args`: where a served
        call's time goes, op by op, with no profiler in the way (a clock read between steps)."""
        import statistics
        runs = [self.runner.run_timed(list(args))[1] for _ in range(max(1, calls))]
        return [(label, op, statistics.median(times) / 1e3)
                for (label, op), times in zip(self.runner.step_names, zip(*runs))]

    def __call__(self, args: tuple):
        outs = self.runner.run(list(args))
        if not torch.is_inference_mode_enabled():  # ordinary tensors for a caller outside inference mode
            outs = [o.clone() for o in outs]
        return pytree.tree_unflatten(outs, self.out_spec)


def signature(args: tuple) -> tuple:
    return tuple((tuple(a.shape), a.dtype, a.device) for a in args)


class ServedGraph(nn.Module):
    """`optimize()`'s model on the graph runner: the prepared (eager) model's graph per input signature.

    A call with tensors shaped, typed and placed like a signature seen before runs that signature's
    runner; a new signature is exported first (about a second for LeViT-128S), at most MAX_GRAPHS of
    them (then the oldest is dropped). A signature whose graph the runner cannot run, or (`inductor`
    given) whose graph leaves GEMMs on unpacked weights — layers the fused modules hand to PyTorch
    (fp16, a dtype's DENSE_MAX_ROWS limit where one is set), which inductor prepacks and fuses — runs
    on `inductor(args)`'s compiled model instead, made on first need.
    Outputs carry no gradient. `model`: the prepared model (armour_kernels.deploy.prepare)."""

    MAX_GRAPHS = 8

    def __init__(self, model: nn.Module, example: tuple, inductor=None):
        super().__init__()
        self.model = model
        self._inductor_factory = inductor
        self._inductor = None
        self._graphs: dict[tuple, object] = {}
        self.graph_for(tuple(example))

    def graph_for(self, args: tuple):
        """The runner (a Graph) or the inductor model that serves inputs like `args`, made if new."""
        _check_signature_arguments(args)
        key = signature(args)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._serve_with(args)
            if len(self._graphs) >= self.MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            self._graphs[key] = graph
        return graph

    def _serve_with(self, args: tuple):
        if self._inductor_factory is None:
            return Graph(self.model, args)
        try:
            graph = Graph(self.model, args)
            reason = f"GEMMs on unpacked weights: {graph.plain_gemms}" if graph.plain_gemms else None
        except Exception as error:  # noqa: BLE001 — not exportable or not runnable: inductor serves it
            graph, reason = None, f"{type(error).__name__}: {error}"
        if reason is None:
            return graph
        if self._inductor is None:
            self._inductor = self._inductor_factory(args)
        return _InductorSignature(self._inductor, reason)

    def forward(self, *args):
        graph = self._graphs.get(signature(args)) if all(isinstance(a, torch.Tensor) for a in args) else None
        return (graph or self.graph_for(args))(args)

    def runners(self) -> dict:
        """{input signature: "graph runner" or "inductor (why)"} of the signatures served so far."""
        return {key: "graph runner" if isinstance(g, Graph) else f"inductor ({g.reason})"
                for key, g in self._graphs.items()}


class _InductorSignature:
    """A signature served by the compiled (inductor) model; `reason`: why not by the graph runner."""

    def __init__(self, compiled: nn.Module, reason: str):
        self.compiled = compiled
        self.reason = reason

    def __call__(self, args: tuple):
        return self.compiled(*args)


def lower(model: nn.Module, example) -> Graph:
    """`model` (a prepared serving model) exported for the example inputs' signature and ready to run
    from C++; raises UnsupportedGraph when a node is not an operator the runner can call."""
    return Graph(model, tuple(example) if isinstance(example, (tuple, list)) else (example,))


__all__ = ["ServedGraph", "Graph", "lower", "UnsupportedGraph", "ArgKind"]
