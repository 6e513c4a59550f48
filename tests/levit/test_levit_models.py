"""LeViT: BatchNorm folding, fused blocks, whole patched models.

Reduced inputs (64×64 / 96×96 images: 4×4 / 6×6 token grids) keep the Triton interpreter fast;
every fused result is compared with the unpatched model, every kernel with a float64 reference.
"""
import copy
import functools

import pytest
import torch
import torch.nn as nn

from helpers import TRITON_DTYPES, assert_close, backend_params, requires_cuda

timm = pytest.importorskip("timm")

from armour_kernels import fold_batchnorm  # noqa: E402
from armour_kernels.nn.levit import (LevitAttention, LevitAttentionDownsample, LevitBlock,  # noqa: E402
                                     LevitDownsampleBlock, LevitMlp)
from armour_kernels.surgery import patch, unpatch  # noqa: E402


def randomise(model, seed=0):
    """Non-trivial BatchNorm statistics and affine terms, and attention bias tables."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
                m.bias.copy_(0.3 * torch.randn(n, generator=g))
            if hasattr(m, "attention_biases"):
                m.attention_biases.copy_(torch.randn(m.attention_biases.shape, generator=g))
    return model


@functools.lru_cache(maxsize=None)
def _built(source, name, img_size):
    """Build (and randomise) each test model once; callers get their own deep copy."""
    if source == "timm":
        return randomise(timm.create_model(name, img_size=img_size, num_classes=10))
    levit = pytest.importorskip("python_ref.levit")
    cfg = levit.LEVIT_CONFIGS["levit_128s"]
    return randomise(levit.Levit(img_size=img_size, num_classes=10, attention=name, **cfg))


def timm_levit(name="levit_128s", img_size=64):
    return copy.deepcopy(_built("timm", name, img_size))


def ref_levit(attention="regular", img_size=64):
    return copy.deepcopy(_built("python_ref", attention, img_size))


def images(b=2, size=64, dtype=torch.float32, seed=1):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


def max_rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-6)).item()


# ----------------------------------------------------------------------------- folding

@pytest.mark.parametrize("make", [
    lambda: timm_levit("levit_128s"),
    lambda: timm_levit("levit_conv_128s"),
    lambda: ref_levit("regular"),
    lambda: ref_levit("armour"),
    lambda: ref_levit("armour_plus"),
], ids=["timm", "timm_conv", "ref_regular", "ref_armour", "ref_armour_plus"])
def test_fold_is_exact_and_idempotent(make):
    model = make().eval()
    x = images()
    with torch.no_grad():
        before = model(x)
        assert fold_batchnorm(model) is model  # in place
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        after = model(x)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        fold_batchnorm(model)
        again = model(x)
    assert max_rel(after, before) < 1e-5
    assert torch.equal(again, after)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_fold_matches_timm_reparameterize():
    from timm.utils.model import reparameterize_model
    model = timm_levit("levit_128s").eval()
    x = images()
    with torch.no_grad():
        theirs = reparameterize_model(model)(x)  # a folded deep copy
        ours = fold_batchnorm(model)(x)
    assert max_rel(ours, theirs) < 1e-5


def test_fold_float64_exact_and_half():
    model = tiny_timm().eval().double()
    x = images().double()
    with torch.no_grad():
        before = model(x)
        after = fold_batchnorm(model)(x)
    assert max_rel(after, before) < 1e-12
    half = tiny_timm().eval()
    fold_batchnorm(half.half())
    assert all(p.dtype == torch.float16 for p in half.parameters())


def test_fold_refuses_training_mode():
    model = timm_levit("levit_128s").train()
    with pytest.raises(RuntimeError, match="training mode"):
        fold_batchnorm(model)


def test_fold_refuses_non_module():
    with pytest.raises(TypeError, match="nn.Module"):
        fold_batchnorm({"weight": torch.ones(2)})


def test_fold_refuses_lonely_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    with pytest.raises(ValueError, match="not next to a projection"):
        fold_batchnorm(model)


# ----------------------------------------------------------------------------- fused blocks

def _blocks(model):
    stage = model.stages[1]
    return {"attn": stage.blocks[0].attn, "down": stage.downsample.attn_downsample, "mlp": stage.blocks[0].mlp}


FUSED = {"attn": LevitAttention, "down": LevitAttentionDownsample, "mlp": LevitMlp}


def _block_input(model, which, x):
    """The activations that reach block `which` of stage 1 in `model` (recorded by a hook)."""
    seen = {}
    target = _blocks(model)[which]
    handle = target.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen["x"]


# "reference" is the op's own python_ref path: the whole-model tests cover it; here the kernels.
@pytest.mark.parametrize("backend", backend_params(["triton", "cpu"]))
@pytest.mark.parametrize("which", ["attn", "down", "mlp"])
@pytest.mark.parametrize("make", [
    lambda: timm_levit("levit_128s", img_size=96),
    lambda: timm_levit("levit_conv_128s", img_size=96),
    lambda: ref_levit("armour", img_size=96),
    lambda: ref_levit("armour_plus", img_size=96),
], ids=["timm", "timm_conv", "ref_armour", "ref_armour_plus"])
def test_fused_block_matches_original(make, which, backend):
    model = make().eval()
    x = _block_input(model, which, images(1, 96))
    original = _blocks(model)[which]
    fused = FUSED[which](copy.deepcopy(original), backend)
    assert list(fused.state_dict()) == list(original.state_dict())
    with torch.no_grad():
        assert_close(fused(x), original(x), torch.float32, msg=f"{which} unfolded eval")
        fold_batchnorm(original)
        fold_batchnorm(fused)
        assert_close(fused(x), original(x), torch.float32, msg=f"{which} folded eval")


@pytest.mark.parametrize("dtype", TRITON_DTYPES)
def test_fused_attention_block_dtypes(dtype):
    model = ref_levit("armour").eval()
    block = _blocks(model)["attn"]
    x = _block_input(model, "attn", images())
    fold_batchnorm(block)
    fused = LevitAttention(copy.deepcopy(block), "triton").to(dtype)
    with torch.no_grad():
        expected = block.double()(x.double())
        assert_close(fused(x.to(dtype)), expected, dtype)


def test_fused_blocks_share_parameters():
    model = timm_levit("levit_128s")
    attn = model.stages[0].blocks[0].attn
    fused = LevitAttention(attn, "reference")
    assert fused.attention_biases is attn.attention_biases
    assert fused.qkv is attn.qkv and fused.proj is attn.proj
    assert "attention_bias_idxs" not in fused.state_dict()  # non-persistent, as in timm


@pytest.mark.parametrize("backend", backend_params(["triton", "cpu"]))
@pytest.mark.parametrize("make", [
    lambda: timm_levit("levit_128s", img_size=96),
    lambda: timm_levit("levit_conv_128s", img_size=96),
    lambda: ref_levit("armour", img_size=96),
], ids=["timm", "timm_conv", "ref_armour"])
def test_residual_blocks_fold_the_add_into_the_last_gemm(make, backend):
    """Patched LevitBlock / LevitDownsample (residual in the proj / MLP GEMM) equal the originals."""
    model = fold_batchnorm(make().eval())
    stage = model.stages[1]
    block, down = stage.blocks[0], stage.downsample
    x_block = _block_input(model, "attn", images(1, 96))
    x_down = _block_input(model, "down", images(1, 96))
    fused = patch(copy.deepcopy(stage), backend=backend)
    assert isinstance(fused.blocks[0], LevitBlock) and isinstance(fused.downsample, LevitDownsampleBlock)
    assert isinstance(fused.blocks[0].attn, LevitAttention) and isinstance(fused.downsample.mlp, LevitMlp)
    with torch.no_grad():
        assert_close(fused.blocks[0](x_block), block(x_block), torch.float32, msg="block")
        assert_close(fused.downsample(x_down), down(x_down), torch.float32, msg="downsample")


def test_residual_block_keeps_drop_path_in_training():
    """With DropPath really dropping, the block runs x + drop_path(f(x)) (same random draws)."""
    from timm.models.levit import LevitBlock as TimmLevitBlock
    block = randomise(TimmLevitBlock(32, key_dim=8, num_heads=2, resolution=4, act_layer=nn.Hardswish,
                                     drop_path=0.5)).train()
    fused = patch(nn.Sequential(copy.deepcopy(block)), backend="reference")
    assert isinstance(fused[0], LevitBlock)
    x = torch.randn(4, 16, 32)
    torch.manual_seed(0)
    expected = block(x)
    torch.manual_seed(0)
    assert_close(fused(x), expected, torch.float32)


# ----------------------------------------------------------------------------- whole models
# Training compares BatchNorm in batch-statistics mode, which amplifies rounding when it sees few
# samples; the reduced two-stage LeViT keeps ≥ 8 tokens per BatchNorm and the interpreter quick.
TINY = dict(embed_dim=(32, 48), key_dim=8, num_heads=(2, 3), depth=(1, 1))


def tiny_timm():
    from timm.models.levit import LevitDistilled
    return randomise(LevitDistilled(img_size=64, num_classes=10, **TINY))


def tiny_ref(attention):
    levit = pytest.importorskip("python_ref.levit")
    return randomise(levit.Levit(img_size=64, num_classes=10, attention=attention, **TINY))


def _grads(model):
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("make", [tiny_timm, lambda: tiny_ref("armour"), lambda: tiny_ref("armour_plus")],
                         ids=["timm", "ref_armour", "ref_armour_plus"])
def test_patched_model_train_and_eval(make, backend):
    model = make()
    fused = patch(copy.deepcopy(model), backend=backend)
    assert sum(isinstance(m, (LevitAttention, LevitAttentionDownsample, LevitMlp)) for m in fused.modules()) == 6
    assert sum(isinstance(m, (LevitBlock, LevitDownsampleBlock)) for m in fused.modules()) == 3
    x = images(2, 64)
    # training: BatchNorm in batch-statistics mode, attention through the autograd op
    model.train(), fused.train()
    out, out_fused = model(x), fused(x)
    assert_close(out_fused, out.detach(), torch.float32, msg="train output")
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * weights).sum().backward()
    (out_fused * weights).sum().backward()
    expected, got = _grads(model), _grads(fused)
    assert expected.keys() == got.keys()
    assert sum("attention_biases" in n for n in got) == 3
    for name in expected:
        assert_close(got[name], expected[name], torch.float32, scale=5, msg=f"grad {name}")
    # inference, unfolded then folded
    model.eval(), fused.eval()
    with torch.no_grad():
        reference = model(x)
        assert_close(fused(x), reference, torch.float32, msg="eval output")
        assert_close(fold_batchnorm(fused)(x), reference, torch.float32, msg="folded eval output")


def test_patched_folded_model_compiles_fullgraph():
    """The inference path (fused GEMMs with Hardswish / residual epilogues, the attention op) traces
    under torch.compile(fullgraph=True) through the custom ops' fake implementations."""
    model = tiny_timm().eval()
    x = images(2, 64)
    with torch.no_grad():
        reference = model(x)
        fused = fold_batchnorm(patch(copy.deepcopy(model), backend="triton"))
        compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
        assert_close(compiled(x), reference, torch.float32)


def test_patched_full_size_model_eval():
    model = timm_levit("levit_128s").eval()  # all LeViT-128S widths and depths, 64×64 input
    x = images(1, 64)
    with torch.no_grad():
        reference = model(x)
        fused = patch(copy.deepcopy(model), backend="triton")
        assert_close(fused(x), reference, torch.float32, msg="eval output")
        assert_close(fold_batchnorm(fused)(x), reference, torch.float32, msg="folded eval output")


def test_patch_unpatch_round_trip():
    model = timm_levit("levit_128s").eval()
    x = images()
    with torch.no_grad():
        reference = model(x)
    patch(model, backend="reference")
    assert isinstance(model.stages[0].blocks[0].attn, LevitAttention)
    unpatch(model)
    assert type(model.stages[0].blocks[0].attn).__name__ == "Attention"
    with torch.no_grad():
        assert torch.equal(model(x), reference)


def test_bad_backend():
    attn = timm_levit("levit_128s").stages[0].blocks[0].attn
    with pytest.raises(ValueError, match="backend must be one of"):
        LevitAttention(attn, "cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        patch(timm_levit("levit_128s"), backend="gpu")


def test_patch_python_ref_folded_model():
    """python_ref.fold.fold_batchnorm replaces Linear_BN by nn.Linear: the fused path takes that too."""
    ref_fold = pytest.importorskip("python_ref.fold").fold_batchnorm
    model = tiny_ref("armour").eval()
    x = images(2, 64)
    with torch.no_grad():
        reference = model(x)
        folded = patch(ref_fold(model), backend="triton")
        assert isinstance(folded.stages[0].blocks[0].attn.qkv, nn.Linear)
        assert_close(folded(x), reference, torch.float32)


def test_fold_patched_then_unpatch():
    model = tiny_timm().eval()
    x = images(2, 64)
    with torch.no_grad():
        reference = model(x)
        fold_batchnorm(patch(model, backend="reference"))
        assert_close(model(x), reference, torch.float32, msg="patched + folded")
        unpatch(model)
        assert_close(model(x), reference, torch.float32, msg="unpatched, still folded")


@requires_cuda
@pytest.mark.parametrize("variant", ["regular", "armour", "armour_plus"])
def test_patched_folded_levit_bf16_autocast_gpu(variant):
    model = (timm_levit("levit_128s", img_size=224) if variant == "regular"
             else ref_levit(variant, img_size=224)).eval().cuda()
    x = images(8, 224).cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        reference = model(x).float()
        fused = fold_batchnorm(patch(copy.deepcopy(model), backend="triton"))
        assert_close(fused(x).float(), reference, torch.bfloat16, scale=2)
