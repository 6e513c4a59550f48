"""The serving graph runner (armour_kernels/runner.py, csrc/runtime/graph_runner.cpp): an exported op graph
run from C++ gives what the eager model gives, for every kind of node it lowers; `optimize` chooses it per
input signature; what it cannot run is refused clearly (or served by inductor under runner="auto")."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import armour_kernels
from armour_kernels.backend import cpu_has_op
from armour_kernels.runner import Graph, ServedGraph, UnsupportedGraph, lower
from helpers import assert_close
from small_models import small_armour_ti, small_timm_levit

pytestmark = pytest.mark.skipif(not cpu_has_op("attention"), reason="needs the C++ extension (CPU kernels)")


class Nodes(nn.Module):
    """One of each kind of node the lowering handles: several returns (var_mean), a returned list (split),
    a tensor list (cat), optional-tensor lists (indexing), a number for a tensor (x / 2), eval dropout,
    a constant tensor list (stack of weights), a list of a constant and a computed tensor, a convolution
    with Hardswish after it, a linear layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 5)
        self.register_buffer("index", torch.tensor([3, 0, 2]))
        self.a = nn.Parameter(torch.randn(8))
        self.b = nn.Parameter(torch.randn(8))
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        h = F.hardswish(self.conv(x.contiguous(memory_format=torch.channels_last)))  # (B, 8, 4, 4)
        t = h.flatten(2).transpose(1, 2)  # (B, 16, 8)
        var, mean = torch.var_mean(t, dim=-1, keepdim=True)
        first, second = t.split(8, dim=1)
        joined = torch.cat([second, first], dim=1) * (var + 1) + mean
        picked = joined[:, self.index]  # aten.index, a constant optional-tensor list
        order = mean[0, :3, 0].argsort()
        computed = joined[:, order]  # aten.index, an optional-tensor list of slots
        scaled = self.drop(picked / 2) + torch.stack([self.a, self.b]).sum(0)
        with_constant = torch.cat([scaled, self.a.expand(scaled.shape[0], 1, 8)], dim=1)  # a constant in a list
        return self.fc(with_constant), t.amax(1) + computed.sum(1)


def run_eager(model, *args):
    with torch.no_grad():
        return model(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_node_kind_matches_eager(dtype):
    model = Nodes().eval().to(dtype)
    x = torch.randn(2, 4, 8, 8, dtype=dtype)
    graph = lower(model, x)
    # the convolution on oneDNN with a reordered weight, the linear on the dense op; where oneDNN has no
    # bf16 kernels (AVX2) a bf16 convolution stays ATen's, and says so
    from armour_kernels.cpu.linear_act import available
    assert graph.plain_gemms == ([] if available(dtype) else ["conv2d"])
    got, expected = graph((x,)), run_eager(model, x)
    assert isinstance(got, tuple) and len(got) == 2  # the model's own output structure
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        assert_close(g, e, dtype)


def test_convolution_takes_hardswish_as_post_op_linear_the_dense_op_and_constants_fold():
    from torch.profiler import ProfilerActivity, profile
    model = Nodes().eval()
    x = torch.randn(2, 4, 8, 8)
    graph = lower(model, x)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        graph((x,))
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("mkldnn::_convolution_pointwise") == 1 and "aten::hardswish" not in calls, calls
    assert calls.get("armour_kernels::dense") == 1 and "aten::linear" not in calls, calls
    assert "aten::dropout" not in calls and "aten::_assert_tensor_metadata" not in calls, calls
    assert "aten::stack" not in calls, calls  # computed from constants only: folded when lowering


def test_unfusable_layers_stay_on_aten_and_are_reported():
    """A grouped convolution and a float64 linear layer (no packed form) run as given."""
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1, groups=2)
            self.w = nn.Parameter(torch.randn(3, 16))

        def forward(self, x):
            return F.linear(self.conv(x).flatten(1).double(), self.w.double()).float()

    model = Plain().eval()
    x = torch.randn(2, 4, 2, 2)
    graph = lower(model, x)
    assert len(graph.plain_gemms) == 2, graph.plain_gemms
    assert_close(graph((x,)), run_eager(model, x), torch.float32)


def test_intermediates_are_freed_after_their_last_use():
    """Every slot a step fills is cleared exactly once, by the step that reads it last (outputs and inputs
    stay the caller's)."""
    from armour_kernels.runner import _Lowering
    model = small_timm_levit()
    serving = armour_kernels.deploy.prepare(model)
    exported = torch.export.export(serving, (torch.randn(1, 3, 64, 64),), strict=False)
    lowering = _Lowering(exported)
    lowering.run()
    filled = [s for step in lowering.steps for s in step[4] if s >= 0]
    freed = [s for step in lowering.steps for s in step[5]]
    assert sorted(freed) == sorted(set(filled) - set(lowering.outputs))
    for index, step in enumerate(lowering.steps):
        for slot in step[5]:
            assert not any(slot in reads for reads in lowering.step_reads[index + 1:]), (step[0], slot)


@pytest.mark.skipif(not cpu_has_op("image_conv"), reason="needs the image_conv op")
def test_input_cast_folds_into_the_image_convolution():
    """A bf16 LeViT's input cast (float32 image → bfloat16) feeds only the stem's image_conv: the runner
    drops the cast and the op reads the float32 image, rounding as it reads — bit for bit the same result.
    A cast with another reader stays."""
    from armour_kernels.runner import _Lowering
    model = small_timm_levit()
    serving = armour_kernels.deploy.prepare(model, dtype=torch.bfloat16)
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(serving, (x,), strict=False)
    lowering = _Lowering(exported)
    lowering.run()
    ops = [step[1] for step in lowering.steps]
    before = ops[:ops.index("armour_kernels::image_conv")]
    assert "aten::to" not in before and "aten::_to_copy" not in before, before
    graph = lower(serving, x)
    with torch.inference_mode():
        assert torch.equal(graph((x,)), serving(x))

    class CastTwice(nn.Module):  # the cast is also returned: it stays a step
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(16, 3, 3, 3).bfloat16())

        def forward(self, image):
            x = image.to(torch.bfloat16)
            return torch.ops.armour_kernels.image_conv(x, self.w, None, 2, 1, 0), x

    twice = CastTwice().eval().requires_grad_(False)
    conv, cast = lower(twice, x)((x,))
    assert cast.dtype == torch.bfloat16 and torch.equal(cast, x.bfloat16())
    assert torch.equal(conv, torch.ops.armour_kernels.image_conv(x.bfloat16(), twice.w, None, 2, 1, 0))


@pytest.mark.skipif(not cpu_has_op("image_conv"), reason="needs the image_conv op")
def test_input_cast_folds_through_the_batch_cut_into_image_chunks(monkeypatch):
    """A static batch's stem runs in image chunks (a split of the cast image): the cast still folds — the
    runner splits the float32 image and each chunk's image_conv rounds as it reads — with the same result;
    a chunk that something else reads keeps the cast."""
    from armour_kernels.cpu import linear_act as cpu_linear_act
    from armour_kernels.plan import conv_widened
    from armour_kernels.runner import _Lowering
    monkeypatch.setattr(cpu_linear_act, "CHUNK_BYTES", 2 * 16 * 32 * 32 * 2)  # 2 bf16 images of 64×64 per chunk
    model = small_timm_levit()
    serving = armour_kernels.deploy.prepare(model, dtype=torch.bfloat16)
    x = torch.randn(3, 3, 64, 64)
    exported = torch.export.export(serving, (x,), strict=False)
    assert any(n.target is torch.ops.aten.split.Tensor for n in exported.graph.nodes)
    lowering = _Lowering(exported)
    lowering.run()
    ops = [step[1] for step in lowering.steps]
    assert ops.count("armour_kernels::image_conv") == 2
    stem = ops[:len(ops) - ops[::-1].index("armour_kernels::image_conv")]
    # no casts but the two of each convolution where oneDNN has no bf16 kernels (AVX2: plan.conv_widened)
    widened = 2 * stem.count("mkldnn::_convolution_pointwise") if conv_widened("cpu", torch.bfloat16) else 0
    assert stem.count("aten::to") + stem.count("aten::_to_copy") == widened, stem
    graph = lower(serving, x)
    with torch.inference_mode():
        assert torch.equal(graph((x,)), serving(x))

    class ChunkAlsoReturned(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(16, 3, 3, 3).bfloat16())

        def forward(self, image):
            first, second = image.to(torch.bfloat16).split(2)
            conv = torch.ops.armour_kernels.image_conv(first, self.w, None, 2, 1, 0)
            return conv, second

    chunked = ChunkAlsoReturned().eval().requires_grad_(False)
    conv, second = lower(chunked, x)((x,))
    assert second.dtype == torch.bfloat16 and torch.equal(second, x[2:].bfloat16())
    assert torch.equal(conv, torch.ops.armour_kernels.image_conv(x[:2].bfloat16(), chunked.w, None, 2, 1, 0))


def test_step_times_name_every_step():
    """Graph.step_times: one (graph node, operator, median µs) per step, in the steps' order, and a timed
    run returns what an untimed one does."""
    model = small_timm_levit()
    x = torch.randn(1, 3, 64, 64)
    graph = armour_kernels.optimize(model, x).graph_for((x,))
    with torch.inference_mode():
        times = graph.step_times((x,), calls=3)
        timed, ns = graph.runner.run_timed([x])
        assert torch.equal(timed[0], graph.runner.run([x])[0])
    assert len(times) == len(ns) == graph.runner.num_steps
    assert all(isinstance(label, str) and ("::" in op or op == "list item") and t >= 0 for label, op, t in times)
    assert "armour_kernels::image_conv" in [op for _, op, _ in times]


class Unflattens(nn.Module):
    def forward(self, x):
        t = x.transpose(1, 2)  # (B, 6, 4): strided
        return (t.unflatten(1, (2, 3)) * 2).sum(1) + x.unflatten(-1, (3, 2)).amax(-1).transpose(1, 2)


def test_unflatten_runs_as_a_view_of_the_traced_shape():
    """aten.unflatten (a composite op: three more dispatcher calls) is lowered to aten.view with the traced
    output shape, on contiguous and strided inputs alike, with the same result."""
    x = torch.randn(2, 4, 6)
    graph = lower(Unflattens(), x)
    ops = [op for _, op in graph.runner.step_names]
    assert "aten::unflatten" not in ops and ops.count("aten::view") == 2, ops
    assert torch.equal(graph((x,)), run_eager(Unflattens(), x))


@pytest.mark.parametrize("build", [small_timm_levit, small_armour_ti], ids=["levit", "armour_ti"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_optimize_serves_models_on_the_graph_runner(build, dtype):
    """runner="auto": a batch-1 model whose GEMMs are all on packed weights runs on the graph runner, with
    the same outputs as inductor's compiled graph (bit for bit: the same kernels) and as the original."""
    model = build()
    size = 64 if build is small_timm_levit else 32
    x = torch.randn(1, 3, size, size)
    served = armour_kernels.optimize(model, x, dtype=dtype)
    assert isinstance(served, ServedGraph) and all(isinstance(g, Graph) for g in served._graphs.values())
    compiled = armour_kernels.optimize(model, x, dtype=dtype, runner="inductor", inference_tensors=False)
    with torch.inference_mode():
        got = served(x)
        assert got.is_inference() and got.dtype == torch.float32
        assert_close(got, compiled(x), dtype, scale=0.5)
        assert_close(got, model(x), dtype, scale=2.0)


def test_new_signatures_get_their_own_graph_and_the_oldest_is_dropped(monkeypatch):
    model = small_armour_ti()
    served = armour_kernels.optimize(model, torch.randn(1, 3, 32, 32))
    monkeypatch.setattr(ServedGraph, "MAX_GRAPHS", 2)
    for batch in (1, 3, 2):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            assert_close(served(x), model(x), torch.float32)
    assert [key[0][0][0] for key in served._graphs] == [3, 2]
    with torch.no_grad():  # float64 requests: a signature of their own, computed in the served dtype
        x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
        got = served(x)
    assert got.dtype == torch.float64
    assert_close(got.float(), model(x.float()), torch.float32)


def test_auto_serves_layers_past_a_row_limit_with_inductor(monkeypatch):
    """Layers above a dtype's DENSE_MAX_ROWS limit (none is set by default) run oneDNN on unpacked weights in
    the exported graph: runner="auto" serves that signature with inductor (which prepacks and fuses them);
    runner="graph" runs it anyway."""
    from armour_kernels import plan
    monkeypatch.setitem(plan.DENSE_MAX_ROWS, torch.bfloat16, 16)  # 2 images × 17 tokens are "many rows"
    model = small_armour_ti()
    x = torch.randn(2, 3, 32, 32)
    auto = armour_kernels.optimize(model, x, dtype=torch.bfloat16, inference_tensors=False)
    [chosen] = auto._graphs.values()
    assert not isinstance(chosen, Graph)
    [why] = auto.runners().values()
    assert why.startswith("inductor (GEMMs on unpacked weights"), why
    forced = armour_kernels.optimize(model, x, dtype=torch.bfloat16, runner="graph")
    [graph] = forced._graphs.values()
    assert isinstance(graph, Graph) and graph.plain_gemms
    with torch.no_grad():
        expected = model(x)
        assert_close(auto(x), expected, torch.bfloat16, scale=2.0)
        assert_close(forced(x), expected, torch.bfloat16, scale=2.0)


class Branching(nn.Module):
    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: t + 1, lambda t: t - 1, (x,))


def test_a_graph_the_runner_cannot_run_is_refused_or_compiled():
    x = torch.randn(2, 3)
    with pytest.raises(UnsupportedGraph, match="not an operator"):
        lower(Branching(), x)
    with pytest.raises(TypeError, match="tensors"):
        lower(Branching(), (x, 2))
    compiled = []
    served = ServedGraph(Branching(), (x,), inductor=lambda args: compiled.append(args) or Branching())
    [why] = served.runners().values()
    assert compiled and why.startswith("inductor (UnsupportedGraph"), why
    torch.testing.assert_close(served(x), Branching()(x))


def test_runner_errors_name_the_node_and_the_inputs():
    from armour_kernels.cpu import _require
    graph = lower(Nodes().eval(), torch.randn(2, 4, 8, 8))
    with pytest.raises(RuntimeError, match="expected 1 input tensors, got 2"):
        graph.runner.run([torch.randn(2, 4, 8, 8)] * 2)
    with pytest.raises(RuntimeError, match="GraphRunner: node"):
        graph.runner.run([torch.randn(2, 5, 8, 8)])  # the convolution's weight was reordered for 4 channels
    GraphRunner = _require().GraphRunner
    with pytest.raises(RuntimeError, match="outside"):
        GraphRunner([], 1, [0], [3])
    with pytest.raises(RuntimeError, match="which takes 3"):
        GraphRunner([("n", "aten::add", "Tensor", [(1, 0)], [1], [])], 2, [0], [1])
    with pytest.raises(RuntimeError):
        GraphRunner([("n", "aten::no_such_op", "", [], [1], [])], 2, [0], [1])
