"""The oneDNN CPU inference path of the Linear + activation family (armour_kernels.cpu.linear_act,
through armour_kernels.ops.linear_act) and the modules that use it.

Every helper is compared with the PyTorch computation it replaces, in float64 as the reference;
chunking is forced small so batches cut into uneven chunks; the modules (FusedMlp, LevitStem, the
projections of FusedDeiTAttention / LevitAttention) must give the unpatched model's output in
inference and keep PyTorch's autograd path when a gradient is wanted.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import assert_close

from armour_kernels import fold_batchnorm, patch
from armour_kernels import plan
from armour_kernels.backend import wants_grad
from armour_kernels.cpu import linear_act as dense
from armour_kernels.nn.levit_stem import LevitStem
from armour_kernels.nn.linear_act import FusedMlp
from armour_kernels.ops import linear_act as ops

pytestmark = pytest.mark.skipif(not dense.available(torch.float32), reason="this PyTorch has no oneDNN")
BF16 = dense.available(torch.bfloat16)
DTYPES = [torch.float32] + ([torch.bfloat16] if BF16 else [])

ACTS = {"none": lambda t: t, "relu": F.relu, "hardswish": F.hardswish, "gelu": F.gelu,
        "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu}


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.fixture(params=["onednn", "aten"])
def engine(request, monkeypatch):
    """Both GEMM engines of the CPU inference path, whatever the problem size."""
    threshold = 0.0 if request.param == "onednn" else float("inf")
    monkeypatch.setattr(plan, "ONEDNN_MIN_FLOPS", {torch.float32: threshold, torch.bfloat16: threshold})
    return request.param


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few KB, so every test batch is cut into several uneven chunks."""
    monkeypatch.setattr(dense, "CHUNK_BYTES", 4096)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("shape", [(1, 16, 8), (2, 197, 64, 96), (3, 7, 5, 33, 17)])
def test_linear_matches_pytorch(shape, act, dtype, engine):
    *lead, k, n = shape
    x, w, b = _rand(*lead, k, dtype=dtype), _rand(n, k, seed=1, dtype=dtype), _rand(n, seed=2, dtype=dtype)
    with torch.inference_mode():
        got = dense.linear(x, w, b, act, dtype)
    expected = ACTS[act](F.linear(x.double(), w.double(), b.double()))
    assert got.shape == (*lead, n) and got.dtype == dtype
    assert_close(got, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_residual_and_no_bias(dtype, engine):
    x, w, r = _rand(5, 40, 24, dtype=dtype), _rand(32, 24, seed=1, dtype=dtype), _rand(5, 40, 32, seed=3, dtype=dtype)
    with torch.inference_mode():
        fused = dense.linear(x, w, None, "none", dtype, residual=r)
        after = dense.linear(x, w, None, "relu", dtype, residual=r)  # activation then add
    assert_close(fused, F.linear(x.double(), w.double()) + r.double(), dtype)
    assert_close(after, F.relu(F.linear(x.double(), w.double())) + r.double(), dtype)


def test_linear_reads_non_contiguous_input():
    x = _rand(4, 50, 64).transpose(0, 1)[:, ::2]  # (50, 2, 64), strided
    w, b = _rand(48, 64, seed=1), _rand(48, seed=2)
    with torch.inference_mode():
        assert_close(dense.linear(x, w, b, "none", torch.float32), F.linear(x.double(), w.double(), b.double()), torch.float32)


def test_linear_under_autocast_computes_in_bf16():
    if not BF16:
        pytest.skip("no oneDNN bf16 on this CPU")
    x, w, b = _rand(3, 20, 32), _rand(16, 32, seed=1), _rand(16, seed=2)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = ops.linear_act(x, w, b, backend="cpu")
        expected = F.linear(x, w, b)
    assert got.dtype == expected.dtype == torch.bfloat16
    assert_close(got, F.linear(x.double(), w.double(), b.double()), torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 197, 1000])
def test_mlp_in_chunks_matches_pytorch(rows, dtype, small_chunks, engine):
    x = _rand(rows, 24, dtype=dtype)
    w1, b1 = _rand(96, 24, seed=1, dtype=dtype), _rand(96, seed=2, dtype=dtype)
    w2, b2 = _rand(24, 96, seed=3, dtype=dtype), _rand(24, seed=4, dtype=dtype)
    r = _rand(rows, 24, seed=5, dtype=dtype)
    hidden = F.gelu(F.linear(x.double(), w1.double(), b1.double()))
    expected = F.linear(hidden, w2.double(), b2.double())
    with torch.inference_mode():
        assert_close(dense.mlp(x, (w1, b1), "gelu", (w2, b2), dtype), expected, dtype, scale=4)
        assert_close(dense.mlp(x, (w1, b1), "gelu", (w2, b2), dtype, residual=r), expected + r.double(), dtype, scale=4)


def _stem_layers(widths=(3, 8, 16, 32), seed=0):
    layers = []
    for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
        act = "hardswish" if i < len(widths) - 2 else "none"
        layers.append((_rand(cout, cin, 3, 3, seed=seed + i) * 0.3, _rand(cout, seed=seed + 10 + i), (2, 2), (1, 1), act))
    return layers


@pytest.mark.parametrize("batch", [1, 5])
def test_conv_chain_in_chunks_matches_pytorch(batch, small_chunks):
    x = _rand(batch, 3, 34, 30)
    layers = _stem_layers()
    expected = x.double()
    for w, b, stride, padding, act in layers:
        expected = ACTS[act](F.conv2d(expected, w.double(), b.double(), stride, padding))
    with torch.inference_mode():
        got = dense.conv_chain(x, layers, torch.float32)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert_close(got, expected, torch.float32)


@pytest.mark.parametrize("image_conv_first", [False, True], ids=["all-widened", "image-conv-first"])
def test_bf16_conv_chain_widened_where_onednn_has_no_bf16(monkeypatch, image_conv_first):
    """Where oneDNN has no bf16 kernels (AVX2) a bf16 conv chain computes each convolution in float32 on
    the bf16 values, rounded once per layer (plan.conv_widened); forced here on any CPU, against float64."""
    assert plan.conv_widened("cpu", torch.bfloat16) == (not BF16)
    assert not plan.conv_widened("cpu", torch.float32) and not plan.conv_widened("reference", torch.bfloat16)
    monkeypatch.setattr(ops, "conv_widened", lambda backend, dtype: dtype == torch.bfloat16)
    monkeypatch.setattr(ops, "cpu_inference", lambda *args: False)  # the chain of F.conv2d, as exported
    x = _rand(2, 3, 34, 30, dtype=torch.bfloat16)
    layers = [(w.bfloat16(), b.bfloat16(), stride, padding, act) for w, b, stride, padding, act in _stem_layers()]
    if not image_conv_first:  # the first layer on F.conv2d too
        monkeypatch.setattr(ops, "image_conv_first", lambda *args: False)
    expected = x.double()
    for w, b, stride, padding, act in layers:
        expected = ACTS[act](F.conv2d(expected, w.double(), b.double(), stride, padding)).bfloat16().double()
    with torch.inference_mode():
        got = ops.conv_chain(x, layers, backend="cpu")
    assert got.dtype == torch.bfloat16 and got.shape == expected.shape
    assert_close(got, expected, torch.bfloat16)


def test_cpu_inference_only_inference_on_cpu_in_fp32_or_bf16():
    x, w = _rand(2, 8), nn.Parameter(_rand(4, 8))
    def serves(backend, dtype, x, w):
        return plan.cpu_inference(backend, dtype, x, wants_grad(x, w))

    assert not serves("cpu", torch.float32, x, w)  # grad mode on and w requires grad: autograd path
    with torch.no_grad():
        assert serves("cpu", torch.float32, x, w)
        assert not serves("reference", torch.float32, x, w) and not serves("triton", torch.float32, x, w)
        assert not serves("cpu", torch.float16, x, w)
        assert not serves("cpu", torch.float64, x, w)
        assert not serves("cpu", torch.float32, x[:0], w)  # nothing to compute: PyTorch's path
    assert serves("cpu", torch.float32, x, w.detach())  # nothing requires grad


def test_activation_of():
    assert ops.activation_of(nn.GELU()) == "gelu" and ops.activation_of(nn.GELU("tanh")) == "gelu_tanh"
    assert ops.activation_of(nn.Hardswish()) == "hardswish" and ops.activation_of(nn.Identity()) == "none"
    assert ops.activation_of(nn.Tanh()) is None


def test_prepared_weights_follow_in_place_updates():
    x, w, b = _rand(6, 16), nn.Parameter(_rand(8, 16, seed=1)), nn.Parameter(_rand(8, seed=2))
    with torch.no_grad():
        for dtype in DTYPES:
            dense.linear(x, w, b, "none", dtype)  # prepared and cached
            w.mul_(2.0)  # an optimizer step / load_state_dict: the version counter moves
            b.add_(1.0)
            got = dense.linear(x, w, b, "none", dtype)
            assert_close(got, F.linear(x.double(), w.double(), b.double()), dtype)
            w.data = _rand(8, 16, seed=3)  # new storage
            assert_close(dense.linear(x, w, b, "none", dtype), F.linear(x.double(), w.double(), b.double()), dtype)


# ----------------------------------------------------------------------------- modules

timm = pytest.importorskip("timm")


def _timm_mlp(act_layer=nn.GELU, norm_layer=None):
    from timm.layers.mlp import Mlp
    torch.manual_seed(0)
    return Mlp(24, 96, act_layer=act_layer, norm_layer=norm_layer).eval()


@pytest.mark.parametrize("act_layer", [nn.GELU, nn.Hardswish, nn.Tanh], ids=["gelu", "hardswish", "tanh_unfused"])
def test_fused_mlp_matches_timm_mlp(act_layer, small_chunks):
    original = _timm_mlp(act_layer)
    fused = FusedMlp(copy.deepcopy(original), "cpu")
    assert list(fused.state_dict()) == list(original.state_dict())
    x = _rand(3, 50, 24)
    with torch.inference_mode():
        assert_close(fused(x), original(x), torch.float32)


def test_fused_mlp_with_norm_and_training_keep_pytorch_path():
    original = _timm_mlp(norm_layer=nn.LayerNorm)
    fused = FusedMlp(copy.deepcopy(original), "cpu")
    x = _rand(2, 9, 24)
    with torch.inference_mode():
        assert torch.equal(fused(x), original(x))  # the norm between act and fc2 cannot be fused
    plain = _timm_mlp()
    fused = FusedMlp(copy.deepcopy(plain), "cpu").train()
    plain.train()
    fused(x).square().sum().backward()
    plain(x).square().sum().backward()
    assert torch.equal(fused.fc1.weight.grad, plain.fc1.weight.grad)


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.num_features, generator=g))
    return model


def test_levit_stem_folded_unfolded_and_python_ref_folded(small_chunks):
    from python_ref.fold import fold_batchnorm as ref_fold
    from timm.models.levit import Stem16
    original = _randomise_bn(Stem16(3, 64, nn.Hardswish)).eval()
    x = _rand(3, 3, 48, 48)
    with torch.inference_mode():
        expected = original(x)
        fused = LevitStem(copy.deepcopy(original), "cpu")
        assert torch.equal(fused(x), expected)  # BatchNorm not folded: the children, in order
        fold_batchnorm(fused)
        got = fused(x)
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert_close(got, expected, torch.float32)
        import python_ref.levit as ref_levit
        ref_stem = _randomise_bn(ref_levit.Stem16(3, 64)).eval()
        ref_expected = ref_stem(x)
        assert_close(LevitStem(ref_fold(ref_stem), "cpu")(x), ref_expected, torch.float32)


def _randomised_deit(name, **kwargs):
    model = timm.create_model(name, **kwargs).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _assert_inference_unchanged(fused, model, x, dtype):
    """fused(x) in inference (under bf16 autocast for bf16) against the unpatched model in float64."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    with torch.inference_mode(), autocast:
        got = fused(x)
    with torch.inference_mode():
        expected = model.double()(x.double())
    assert_close(got, expected, dtype, scale=4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_patched_timm_deit_inference_unchanged(dtype):
    model = _randomised_deit("deit_tiny_patch16_224", img_size=64, num_classes=10)
    fused = patch(copy.deepcopy(model), backend="cpu")
    assert sum(isinstance(m, FusedMlp) for m in fused.modules()) == 12
    _assert_inference_unchanged(fused, model, _rand(2, 3, 64, 64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_patched_timm_levit_inference_unchanged(dtype):
    model = _randomise_bn(timm.create_model("levit_128s", img_size=64, num_classes=10)).eval()
    fused = fold_batchnorm(patch(copy.deepcopy(model), backend="cpu"))
    assert isinstance(fused.stem, LevitStem)
    _assert_inference_unchanged(fused, model, _rand(3, 3, 64, 64), dtype)


def test_torch_compile_takes_the_plain_path():
    """Under torch.compile the modules hand the compiler plain F.linear / conv (inductor lowers the oneDNN
    ops only for frozen weights): fullgraph tracing works and gives the eager result."""
    original = _timm_mlp()
    fused = FusedMlp(copy.deepcopy(original), "cpu")
    x = _rand(2, 9, 24)
    with torch.inference_mode():
        compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
        assert_close(compiled(x), original(x), torch.float32)
