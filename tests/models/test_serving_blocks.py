"""What a served DeiT / ViT runs beyond `patch` (surgery/serving.py `fuse_for_serving`): FusedBlock (each
block's LayerNorms as the qkv / fc1 projections' prologue, its residual adds as the proj / fc2
epilogue, nn/block.py) and FusedPatchEmbed (the patch embedding as one dense GEMM over patch rows,
nn/patch_embed.py): same outputs as the model, eager and compiled, the cases left alone, the
original computation wherever the fused one does not apply."""
import pytest
import torch

import armour_kernels
import python_ref
from armour_kernels.backend import cpu_has_op
from armour_kernels.deploy import prepare
from armour_kernels.nn import FusedBlock, FusedPatchEmbed
from helpers import assert_close
from small_models import small_armour_ti, small_timm_deit

pytestmark = pytest.mark.skipif(not cpu_has_op("dense"), reason="needs the C++ extension (CPU kernels)")


def count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


@pytest.mark.parametrize("source", ["timm", "python_ref"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_prepare_fuses_blocks_and_patch_embedding(source, dtype):
    model = small_timm_deit() if source == "timm" else small_armour_ti()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    served = prepare(model, dtype=dtype)
    assert count(served, FusedBlock) == 2 and count(served, FusedPatchEmbed) == 1
    assert served.model.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        assert_close(served(x), expected, dtype)
    assert count(model, FusedBlock) == 0  # the model given is left as it was


@pytest.mark.parametrize("runner", ["auto", "inductor"])
def test_optimize_runs_blocks_as_dense_calls(runner):
    """Served, a block is two dense calls, one dense_mlp call (the norms and adds inside them) and one
    attention call; the patch embedding one patch_rows and one dense call. The graph runner also runs the
    classifier head on the dense op, the final LayerNorm on ATen's (inductor's own kernel when compiled)."""
    from torch.profiler import ProfilerActivity, profile

    model = small_armour_ti()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    optimized = armour_kernels.optimize(model, x, inference_tensors=False, runner=runner)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        got = optimized(x)
    assert_close(got, expected, torch.float32)
    calls = {e.key: e.count for e in prof.key_averages()}
    graph = runner == "auto"
    assert calls.get("armour_kernels::dense") == 2 * 2 + 1 + graph, calls
    assert calls.get("armour_kernels::dense_mlp") == 2, calls
    assert calls.get("armour_kernels::attention") == 2, calls
    assert calls.get("armour_kernels::patch_rows") == 1, calls
    assert calls.get("aten::native_layer_norm", 0) == graph  # the block norms are gone


def test_blocks_with_layer_scale_are_left_alone():
    """A LayerScale between attention and the residual add is not fused: the block keeps timm's class (its
    attention and MLP are still the fused modules) and the outputs match."""
    model = small_timm_deit(init_values=0.1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    served = prepare(model)
    assert count(served, FusedBlock) == 0 and count(served, FusedPatchEmbed) == 1
    with torch.no_grad():
        assert_close(served(x), expected, torch.float32)


def test_fused_block_runs_the_original_computation_when_training_or_masked():
    """In training the block is timm's computation (gradients reach every weight); in eval an attn_mask
    reaches the fused attention; both match the original block."""
    model = small_timm_deit()
    original = model.blocks[0]
    armour_kernels.patch(model)
    block = FusedBlock(model.blocks[0])
    x = torch.randn(2, 17, 192)
    mask = torch.rand(2, 1, 17, 17) > 0.3
    mask[..., 0] = True
    with torch.no_grad():
        assert_close(block(x, attn_mask=mask), original(x, attn_mask=mask), torch.float32)
        assert_close(block(x), original(x), torch.float32)
    block.train()
    assert not block.fusable()
    block(x.requires_grad_()).sum().backward()
    assert all(p.grad is not None for p in block.parameters())
    scripted = torch.jit.script(block.eval())
    with torch.no_grad():
        assert_close(scripted(x.detach()), original(x.detach()), torch.float32)


def test_fused_patch_embedding_checks_and_floors():
    """timm's input-size checks are kept; python_ref's patch embedding (no checks) drops the pixels past the
    last whole patch, as its convolution does; a norm after the projection is not fusable."""
    timm = pytest.importorskip("timm")
    from timm.layers import PatchEmbed

    strict = FusedPatchEmbed(PatchEmbed(img_size=32, patch_size=8, embed_dim=16).eval())
    assert strict.fusable() and strict.num_patches == 16
    with pytest.raises(AssertionError, match="doesn't match"):
        strict(torch.randn(1, 3, 40, 32))
    loose = FusedPatchEmbed(PatchEmbed(img_size=32, patch_size=8, embed_dim=16, strict_img_size=False).eval())
    with pytest.raises(AssertionError, match="divisible"):
        loose(torch.randn(1, 3, 36, 32))
    assert not FusedPatchEmbed(PatchEmbed(img_size=32, patch_size=8, embed_dim=16,
                                          norm_layer=torch.nn.LayerNorm)).fusable()
    ref = python_ref.deit.PatchEmbed(img_size=32, patch_size=8, embed_dim=16).eval()
    fused = FusedPatchEmbed(ref)
    x = torch.randn(2, 3, 37, 35)
    with torch.no_grad():
        assert_close(fused(x), ref(x), torch.float32)
    assert_close(torch.jit.script(fused)(x), ref(x), torch.float32)
    del timm
