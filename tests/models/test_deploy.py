"""armour_kernels.optimize: same outputs as the model given, which stays as it was.

Each test compiles small models (one block per stage, 32×32 or 64×64 images) so that inductor
builds in well under a minute on 2 cores. (AOTInductor packages: test_export.py.)
"""
import pytest
import torch

import armour_kernels
import python_ref
from armour_kernels.backend import cpu_has_op
from armour_kernels.deploy import prepare
from armour_kernels.hugepages import hugepages_available
from armour_kernels.surgery.serving import ChannelsLastOutput
from helpers import assert_close
from small_models import small_armour_ti, small_timm_levit

pytestmark = pytest.mark.skipif(not cpu_has_op("attention"), reason="needs the C++ extension (CPU kernels)")


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def assert_unchanged(model, before):
    state, types = before
    assert [type(m) for m in model.modules()] == types, "optimize changed the model given"
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(after[key], value), key


def test_prepared_model_has_no_graph_break():
    """What optimize compiles traces as one graph with the fused attention op in it (fullgraph)."""
    model = small_timm_levit()
    x = torch.randn(2, 3, 64, 64)
    explained = torch._dynamo.explain(prepare(model))(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    ops = {str(node.target) for graph in explained.graphs for node in graph.graph.nodes}
    assert "armour_kernels.attention.default" in ops, sorted(ops)  # the C++ dispatcher op


@pytest.mark.parametrize("runner", ["auto", "inductor"])
def test_optimize_levit_fp32_same_outputs_original_untouched(runner):
    from armour_kernels.runner import ServedGraph
    model = small_timm_levit()
    before = snapshot(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    optimized = armour_kernels.optimize(model, x, runner=runner, inference_tensors=False)
    assert isinstance(optimized, ServedGraph) == (runner == "auto")  # fp32 on packed weights: the graph runner
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        got = optimized(x)
    assert got.dtype == torch.float32
    assert_close(got, expected, torch.float32)
    ops = {e.key for e in prof.key_averages()}
    # the graph calls the attention op itself (no graph break back into eager Python): the C++
    # dispatcher op, no Python on the call
    assert "armour_kernels::attention" in ops
    # frozen: every GEMM runs on a weight prepacked once (inductor: MKL / oneDNN; the graph runner: the
    # dense op, the classifier head too), none through ATen's addmm / mm
    prepacked = {"mkl::_mkl_linear", "mkldnn::_linear_pointwise"} if runner == "inductor" else {"armour_kernels::dense"}
    assert prepacked & ops and not {"aten::addmm", "aten::mm", "aten::linear"} & ops, ops
    assert_unchanged(model, before)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()), "the original was folded"
    assert not model.training


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_optimize_runs_the_dense_op_on_packed_weights(dtype):
    """optimize() packs the fused modules' projections (non-persistent buffers: state dict unchanged) and
    its compiled graph calls armour_kernels::dense for them; pack=False leaves them to inductor. Same outputs."""
    from torch.profiler import ProfilerActivity, profile

    from armour_kernels.nn._packed import PACKED

    model = small_timm_levit()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    served = prepare(model, dtype=dtype)
    packed = [m for m in served.modules() if hasattr(m, PACKED)]
    assert len(packed) == 3 * 4 + 2 * 5, len(packed)  # 3 blocks: qkv, proj, 2 MLP; 2 subsamples: kv, q, proj, 2 MLP
    assert served.state_dict().keys() == prepare(model, dtype=dtype, pack=False).state_dict().keys()
    biases = [m.attention_biases for m in served.modules() if hasattr(m, "attention_bias_idxs")]
    assert biases and all(b.dtype == torch.float32 for b in biases)  # gathered, kept float32 for the CPU kernel
    for pack in (True, False):
        optimized = armour_kernels.optimize(model, x, dtype=dtype, pack=pack, inference_tensors=False,
                                            runner="inductor")  # the graph runner also packs the head
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            got = optimized(x)
        assert_close(got, expected, dtype)
        # every packed layer runs the dense op: alone, or with its MLP partner in one dense_mlp call
        calls = {e.key: e.count for e in prof.key_averages()}
        dense_calls = calls.get("armour_kernels::dense", 0) + 2 * calls.get("armour_kernels::dense_mlp", 0)
        assert dense_calls == (len(packed) if pack else 0), calls
        # the stem's first convolution reads the NCHW image itself (plan.image_conv_first)
        assert sum(e.count for e in prof.key_averages() if e.key == "armour_kernels::image_conv") == 1


@pytest.mark.parametrize("source", ["timm", "python_ref"])
def test_prepare_merges_a_distilled_levits_heads(source):
    """A distilled LeViT serves one classifier GEMM: head holds both heads' sum, head_dist gives zeros;
    the logits are the heads' mean as before, the model given keeps its two heads."""
    from armour_kernels.surgery.serving import ZeroLogits

    if source == "timm":
        model = small_timm_levit()
    else:
        torch.manual_seed(0)
        model = python_ref.levit.Levit(img_size=64, embed_dim=(32, 48), key_dim=8, depth=(1, 1), num_heads=(2, 3),
                                       attn_ratio=(2, 2), mlp_ratio=(2, 2), num_classes=10, distilled=True).eval()
    before = snapshot(model)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        served = prepare(model)
        assert isinstance(served.model.head_dist, ZeroLogits)
        assert_close(served(x), expected, torch.float32)
    assert_unchanged(model, before)


def test_dynamic_batch_with_packed_mlp_chunks():
    """A batch-dynamic compile whose example batch is large enough for the packed MLP's row chunks still
    compiles one graph for every batch (the chunking steps aside for a symbolic row count)."""
    model = small_armour_ti()  # 17 tokens, MLP hidden 768: chunks of 2048 rows in fp32
    x = torch.randn(130, 3, 32, 32)
    optimized = armour_kernels.optimize(model, x, dynamic_batch=True, inference_tensors=False)
    for batch in (130, 7):
        xb = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            assert_close(optimized(xb), model(xb), torch.float32)


def test_static_batch_cuts_a_large_packed_mlp_in_row_chunks(monkeypatch):
    """A static-batch compile runs a packed MLP whose hidden buffer would be above glibc's mmap threshold
    in row chunks inside the graph (bf16 above a DENSE_MAX_ROWS limit: oneDNN's layers); a batch-dynamic one
    runs it whole; same outputs. Where the dense op runs both layers (fp32) the MLP is one dense_mlp call
    per block, whose hidden rows never go to memory: nothing to cut."""
    from torch.profiler import ProfilerActivity, profile

    from armour_kernels import plan
    from armour_kernels.cpu import linear_act as cpu_linear_act
    monkeypatch.setitem(plan.DENSE_MAX_ROWS, torch.bfloat16, 512)  # bf16 layers above 512 rows on oneDNN
    monkeypatch.setattr(cpu_linear_act, "MMAP_BYTES", 1 << 20)  # the 3.4 MB bf16 hidden counts as large
    monkeypatch.setattr(cpu_linear_act, "CHUNK_BYTES", 3 << 20)  # chunks of 2048 rows (hidden 768, bf16)
    model = small_armour_ti()  # 2 blocks; 130 images × 17 tokens = 2210 rows: 2 chunks
    x = torch.randn(130, 3, 32, 32)
    calls = {}
    for dtype, dynamic in ((torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, False)):
        optimized = armour_kernels.optimize(model, x, dtype=dtype, dynamic_batch=dynamic, inference_tensors=False)
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            assert_close(optimized(x), model(x), dtype)
        calls[dtype, dynamic] = {e.key: e.count for e in prof.key_averages()}
    # layer calls: oneDNN's (rows above DENSE_MAX_ROWS: a whole batch, the first chunk) and the dense op's
    # (the last chunk of 162 rows)
    layers = [sum(n * (2 if k.endswith("dense_mlp") else 1) for k, n in calls[torch.bfloat16, d].items()
                  if "linear" in k or k.startswith("armour_kernels::dense")) for d in (False, True)]
    assert layers[0] == layers[1] + 2 * 2, calls  # per block one more fc1 and fc2 call
    assert calls[torch.float32, False].get("armour_kernels::dense_mlp") == 2, calls


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_levit_stem_image_chunks_static_and_dynamic_batch(monkeypatch, dynamic):
    """The compiled LeViT stem cuts a static batch into image chunks; a batch-dynamic compile keeps the
    batch whole (a chunk count would specialise it) and serves every batch from one graph."""
    from armour_kernels.cpu import linear_act as cpu_linear_act
    monkeypatch.setattr(cpu_linear_act, "CHUNK_BYTES", 2 * 16 * 32 * 32 * 4)  # 2 images of 64×64 per chunk
    model = small_timm_levit()
    x = torch.randn(3, 3, 64, 64)
    optimized = armour_kernels.optimize(model, x, dynamic_batch=dynamic, inference_tensors=False)
    for batch in ((3, 5) if dynamic else (3,)):
        xb = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            assert_close(optimized(xb), model(xb), torch.float32)


@pytest.mark.parametrize("runner", ["auto", "inductor"])
def test_every_calling_mode_reuses_the_frozen_graphs(runner):
    """Under inference_mode (ordinary or inference-tensor inputs), no_grad or grad mode on, the
    optimized model runs the frozen graphs optimize compiled (or the graph runner's): no new
    compilation, no unpacked GEMM, no gradient."""
    from torch._dynamo.utils import counters
    from torch.profiler import ProfilerActivity, profile
    model = small_timm_levit()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    optimized = armour_kernels.optimize(model, x, runner=runner)
    with torch.inference_mode():
        x_inference = x.clone()
    graphs = counters["stats"]["unique_graphs"]
    calls = {"inference_mode": (torch.inference_mode, x), "inference tensor": (torch.inference_mode, x_inference),
             "no_grad": (torch.no_grad, x), "grad mode": (torch.enable_grad, x), "grad mode, inference tensor":
             (torch.enable_grad, x_inference)}
    for name, (mode, inputs) in calls.items():
        with mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            got = optimized(inputs)
        assert not got.requires_grad
        assert got.is_inference() == (mode is torch.inference_mode) or runner == "inductor"
        assert_close(got, expected, torch.float32)
        ops = {e.key for e in prof.key_averages()}
        assert not {"aten::addmm", "aten::mm"} & ops, (name, ops)
    assert counters["stats"]["unique_graphs"] == graphs


def test_serving_guards_keep_the_input_checks_only():
    """optimize's graphs are guarded on their inputs (a new batch size compiles again, correctly), not
    on the backend policy or the modules read while tracing (fixed once the model is frozen)."""
    from torch._dynamo.utils import counters
    model = small_armour_ti()
    x = torch.randn(1, 3, 32, 32)
    optimized = armour_kernels.optimize(model, x, runner="inductor")
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad(), armour_kernels.use_backend("reference"):
        optimized(x)
    if armour_kernels.deploy._GUARD_FILTERS:
        assert counters["stats"]["unique_graphs"] == graphs
    x2 = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(optimized(x2), model(x2), torch.float32)


def test_optimize_armour_ti_bf16_dynamic_batch():
    model = small_armour_ti()
    before = snapshot(model)
    x = torch.randn(3, 3, 32, 32)
    optimized = armour_kernels.optimize(model, x, dtype=torch.bfloat16, dynamic_batch=True)
    frames = torch._dynamo.utils.counters["frames"]["ok"]
    for batch in (3, 5, 2):  # one graph serves every batch size: no recompilation
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(x)
            got = optimized(x)
        assert got.dtype == torch.float32  # served in the input's dtype, computed in bf16
        assert_close(got, expected, torch.bfloat16, scale=2.0)
    assert torch._dynamo.utils.counters["frames"]["ok"] == frames
    assert_unchanged(model, before)
    assert next(model.parameters()).dtype == torch.float32


def test_optimize_refuses_bad_arguments():
    with pytest.raises(ValueError, match="runner"):
        armour_kernels.optimize(small_armour_ti(), torch.randn(1, 3, 32, 32), runner="eager")
    with pytest.raises(ValueError, match="dtype"):
        armour_kernels.optimize(small_armour_ti(), torch.randn(1, 3, 32, 32), dtype=torch.int8)
    with pytest.raises(TypeError, match="nn.Module"):
        armour_kernels.optimize(lambda x: x, torch.randn(1, 3, 32, 32))


def test_prepare_leaves_the_model_as_it_was():
    """prepare (what optimize and export_package compile) folds, patches and casts a copy only."""
    model = small_timm_levit().train()
    before = snapshot(model)
    served = prepare(model, dtype=torch.bfloat16)
    assert model.training and not served.training
    assert_unchanged(model, before)
    assert next(served.parameters()).dtype == torch.bfloat16 and not next(served.parameters()).requires_grad
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in served.modules())
    assert isinstance(served.model.stem, ChannelsLastOutput)  # contiguous tokens for the first stage's GEMMs
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(served(x), prepare(model.eval(), dtype=torch.bfloat16, dense_biases=False)(x), torch.bfloat16)



def test_many_optimized_models_each_stay_compiled_and_frozen():
    """Every compiled model has its own Dynamo cache: the 9th (past the recompile limit of 8 that one
    shared code object would hit) is still compiled, with its weights frozen and prepacked."""
    from torch.profiler import profile

    from armour_kernels.deploy import ServingModel, compile_frozen, inductor_options
    models = []
    for _ in range(torch._dynamo.config.recompile_limit + 1):
        plain = ServingModel(torch.nn.Linear(8, 4).eval().requires_grad_(False), torch.float32)
        models.append((plain, compile_frozen(plain, torch.randn(2, 8), inductor_options(torch.device("cpu")))))
    x = torch.randn(2, 8)
    with torch.no_grad():
        for plain, compiled in models:
            torch.testing.assert_close(compiled(x), plain(x))
        with profile() as prof:
            models[-1][1](x)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::addmm" not in ops and {"mkl::_mkl_linear", "mkldnn::_linear_pointwise"} & ops, ops


def _in_one_mapping(tensors, nbytes):
    """Whether every tensor lies inside one block of `nbytes` that starts on a 2 MB boundary."""
    from armour_kernels.hugepages import HUGE_PAGE
    lo = min(t.data_ptr() for t in tensors)
    hi = max(t.data_ptr() + t.numel() * t.element_size() for t in tensors)
    return lo % HUGE_PAGE == 0 and hi - lo <= nbytes


@pytest.mark.skipif(not hugepages_available(), reason="no transparent huge pages here")
def test_place_on_hugepages_moves_the_weights_in_place():
    """Each weight that owns its storage moves into one 2 MB-aligned mapping, as the same tensor object
    with the same values, together with every tensor that is the same whole storage; the model computes
    the same; the mapping lives as long as the tensors."""
    import gc

    from armour_kernels.hugepages import MIN_BYTES, place_on_hugepages
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64)).eval()
    model.register_buffer("view", model[0].weight.detach()[1:])  # shares a storage: stays
    model.register_buffer("alias", model[2].weight.detach())  # the whole storage (an unpacked weight): moves along
    x = torch.randn(5, 64)
    with torch.no_grad():
        expected = model(x)
    params = list(model.parameters())
    values = [p.detach().clone() for p in params]
    moved = place_on_hugepages(model)
    big = [p for p in params if p.numel() * p.element_size() >= MIN_BYTES]
    assert moved >= sum(p.numel() * p.element_size() for p in big) and len(big) == 2
    assert list(model.parameters()) == params and all(torch.equal(p, v) for p, v in zip(params, values))
    assert _in_one_mapping(big, moved)
    assert model.view.data_ptr() != model[0].weight.data_ptr() + 64 * 4  # a view keeps its old storage
    assert model.alias.data_ptr() == model[2].weight.data_ptr()  # one copy for both
    gc.collect()
    with torch.no_grad():
        assert torch.equal(model(x), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_optimize_serves_from_hugepages_with_the_same_outputs(monkeypatch, dtype):
    """optimize() on the graph runner moves the served weights onto 2 MB pages; the outputs are bit for bit
    those of the same served model left on ordinary pages."""
    from armour_kernels import hugepages
    model = small_timm_levit()
    x = torch.randn(2, 3, 64, 64)
    served = armour_kernels.optimize(model, x, dtype=dtype)
    with torch.no_grad():
        got = served(x)
    if hugepages.hugepages_available():
        weights = [*served.model.parameters(), *served.model.buffers()]
        packed = [t for t in weights if t.numel() * t.element_size() >= hugepages.MIN_BYTES]
        assert packed and _in_one_mapping(packed, 1 << 30)
    monkeypatch.setattr(hugepages, "place_on_hugepages", lambda model: 0)
    plain = armour_kernels.optimize(model, x, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(got, plain(x))
