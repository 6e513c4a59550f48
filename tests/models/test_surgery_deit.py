"""DeiT surgery: a patched model computes what the original does, and unpatch gives it back."""
import pytest
import timm
import torch
import torch.nn as nn

import armour_kernels
from armour_kernels.nn.attention import ArmourAttention, FusedDeiTAttention
from helpers import backend_params
from python_ref.attention import DEIT_VARIANTS
from python_ref.deit import Attention as RefAttention


def tiny_deit():
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2, img_size=32, num_classes=10)


def forward_backward(model, x):
    model.zero_grad()
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("backend", backend_params(["triton", "reference"]))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_patched_timm_deit_matches(backend, mode):
    model = tiny_deit()
    model.train(mode == "train")  # dropout rates are 0 in deit_tiny: train mode is deterministic
    x = torch.randn(2, 3, 32, 32)
    out, grads = forward_backward(model, x)
    params_before = dict(model.named_parameters())
    state_keys = list(model.state_dict())

    armour_kernels.patch(model, backend=backend)
    fused = [m for m in model.modules() if isinstance(m, FusedDeiTAttention)]
    assert len(fused) == 2 and all(m.backend == backend and m.variant == "regular" for m in fused)
    assert list(model.state_dict()) == state_keys
    assert all(p is params_before[name] for name, p in model.named_parameters())  # shared, not copied
    out_p, grads_p = forward_backward(model, x)
    torch.testing.assert_close(out_p, out, atol=2e-5, rtol=2e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_p[name], grad, atol=2e-5, rtol=2e-4, msg=name)

    armour_kernels.unpatch(model)
    assert not any(isinstance(m, FusedDeiTAttention) for m in model.modules())
    assert type(model.blocks[0].attn).__name__ == "Attention"
    torch.testing.assert_close(model(x), out_p, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("variant", list(DEIT_VARIANTS))
def test_patched_python_ref_attention_matches(variant):
    torch.manual_seed(1)
    model = nn.Sequential(RefAttention(64, 2, variant=variant))
    x = torch.randn(2, 11, 64, requires_grad=True)
    out, grads = forward_backward(model, x)
    armour_kernels.patch(model, backend="triton")
    assert isinstance(model[0], FusedDeiTAttention) and model[0].variant == variant
    out_p, grads_p = forward_backward(model, x)
    torch.testing.assert_close(out_p, out, atol=2e-5, rtol=2e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_p[name], grad, atol=2e-5, rtol=2e-4, msg=name)
    armour_kernels.unpatch(model)
    assert type(model[0]) is RefAttention


def test_patch_passes_backend_and_unpatch_keeps_training():
    model = tiny_deit()
    armour_kernels.patch(model, backend="reference")
    assert {m.backend for m in model.modules() if isinstance(m, FusedDeiTAttention)} == {"reference"}
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.add_(1.0)  # "training" after patch
    weight = model.blocks[0].attn.qkv.weight.clone()
    armour_kernels.unpatch(model)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, weight)


def test_unsupported_timm_attention_is_refused():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32, qk_norm=True)
    with pytest.raises(ValueError, match="q_norm"):
        armour_kernels.patch(model, backend="reference")


def test_armour_attention_module():
    torch.manual_seed(2)
    module = ArmourAttention(64, num_heads=4, backend="triton")
    assert module.qkv.out_features == 128 and set(module.state_dict()) == {
        "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    x = torch.randn(2, 9, 64)
    reference = RefAttention(64, 4, variant="armour")
    reference.load_state_dict(module.state_dict())
    torch.testing.assert_close(module(x), reference(x), atol=2e-5, rtol=2e-5)
    module.attn_drop.p = 0.1
    with pytest.raises(NotImplementedError, match="dropout"):
        module(x)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("variant", list(DEIT_VARIANTS))
def test_scripted_attention_matches_eager(variant):
    """torch.jit.script runs every variant on the attention op (forward and gradients), with a mask too."""
    torch.manual_seed(3)
    module = FusedDeiTAttention(64, num_heads=2, variant=variant)
    scripted = torch.jit.script(module)
    assert "armour_kernels::attention" in str(scripted.inlined_graph)
    mask = torch.rand(2, 1, 1, 9) > 0.3
    for kwargs in ({}, {"attn_mask": mask}):
        results = []
        for fn in (module, scripted):
            x = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(4), requires_grad=True)
            module.zero_grad()
            out = fn(x, **kwargs)
            out.square().sum().backward()
            results.append((out.detach(), x.grad, module.qkv.weight.grad.clone()))
        for eager, script in zip(*results):
            torch.testing.assert_close(script, eager, atol=2e-5, rtol=2e-5)


def test_scripted_reference_backend_says_it_is_python():
    module = torch.jit.script(FusedDeiTAttention(64, num_heads=2, backend="reference"))
    with pytest.raises(Exception, match="'reference' backend is Python and does not run in TorchScript"):
        module(torch.randn(1, 4, 64))
