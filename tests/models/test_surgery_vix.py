"""Vision Xformers surgery: patched python_ref.vix models compute what the originals do, and unpatch gives them back."""
import pytest
import torch
import torch.nn as nn

import armour_kernels
from armour_kernels.nn.nystrom import NystromAttention
from armour_kernels.nn.performer import PerformerAttention
from armour_kernels.nn.vix import FusedViXAttention
from python_ref import create_model, vix
from helpers import assert_close, backend_params, requires_cuda

FUSED = {"softmax": FusedViXAttention, "nystrom": NystromAttention, "performer": PerformerAttention}
ORIGINAL = {"softmax": vix.Attention, "nystrom": vix.NystromAttention, "performer": vix.PerformerSelfAttention}

# (attention, rope, armour): every form the fused modules take in the ViX models.
CASES = [("softmax", False, False), ("softmax", True, False), ("softmax", False, True), ("softmax", True, True),
         ("nystrom", False, False), ("nystrom", False, True), ("nystrom", True, True),
         ("performer", False, False), ("performer", False, True), ("performer", True, True)]


def tiny_vix(attention, **kwargs):
    """A 4×4 image → 17 tokens: 8 landmarks make Nyström front-pad 7 rows; 2 heads × 16."""
    torch.manual_seed(0)
    return create_model("vix_cifar", attention=attention, img_size=4, depth=1, embed_dim=32, num_heads=2,
                        head_dim=16, mlp_dim=32, num_landmarks=8, **kwargs)


def forward_backward(model, x):
    model.zero_grad()
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same(model, x, out, grads):
    out_p, grads_p = forward_backward(model, x)
    torch.testing.assert_close(out_p, out, atol=2e-5, rtol=2e-5)
    assert grads_p.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_p[name], grad, atol=2e-5, rtol=2e-4, msg=name)


@pytest.mark.parametrize("backend", backend_params(["triton", "reference"]))
@pytest.mark.parametrize("attention, rope, armour", CASES)
def test_patched_vix_matches(attention, rope, armour, backend):
    model = tiny_vix(attention, rope=rope, armour=armour).eval()
    x = torch.randn(2, 3, 4, 4)
    out, grads = forward_backward(model, x)
    params_before = dict(model.named_parameters())
    state_before = model.state_dict()

    armour_kernels.patch(model, backend=backend)
    mixer = model.transformer.layers[0][0].fn
    assert type(mixer) is FUSED[attention] and mixer.backend == backend and mixer.rope == rope
    assert not mixer.training
    assert list(model.state_dict()) == list(state_before)
    assert all(p is params_before[name] for name, p in model.named_parameters())  # shared, not copied
    for name, tensor in model.state_dict().items():
        assert tensor.data_ptr() == state_before[name].data_ptr(), name  # buffers too (the random features)
    assert_same(model, x, out, grads)

    armour_kernels.unpatch(model)
    assert type(model.transformer.layers[0][0].fn) is ORIGINAL[attention]
    assert_same(model, x, out, grads)


@pytest.mark.parametrize("generalized, mode", [(True, "clean"), (False, "seed")])
def test_patched_performer_kernel_and_mode(generalized, mode):
    """The relu (generalised) kernel and the paper's batch-wide stabiliser, which create_model does not expose."""
    torch.manual_seed(3)
    model = nn.Sequential(vix.PerformerSelfAttention(32, heads=2, dim_head=16, generalized_attention=generalized,
                                                     mode=mode))
    x = torch.randn(2, 13, 32)
    out, grads = forward_backward(model, x)
    armour_kernels.patch(model, backend="triton")
    assert model[0].kernel == ("relu" if generalized else "softmax") and model[0].mode == mode
    assert_same(model, x, out, grads)


def test_patched_nystrom_seed_mode_without_residual():
    torch.manual_seed(4)
    model = nn.Sequential(vix.NystromAttention(32, dim_head=16, heads=2, num_landmarks=4, residual=False, mode="seed"))
    x = torch.randn(2, 10, 32)
    out, grads = forward_backward(model, x)
    armour_kernels.patch(model, backend="triton")
    assert model[0].mode == "seed" and not model[0].residual
    assert_same(model, x, out, grads)


def test_unfusable_mixers_are_left_alone():
    torch.manual_seed(5)
    model = nn.Sequential(vix.Attention(32, heads=2, dim_head=16), vix.FNetBlock(),
                          vix.LinformerSelfAttention(32, seq_len=9, k=4, heads=2, one_kv_head=True, share_kv=True))
    x = torch.randn(2, 9, 32)
    out, grads = forward_backward(model, x)
    armour_kernels.patch(model, backend="reference")
    assert [type(m) for m in model] == [FusedViXAttention, vix.FNetBlock, vix.LinformerSelfAttention]
    assert_same(model, x, out, grads)


@pytest.mark.parametrize("attention, options", [("fnet", {}), ("linformer", {"linformer_k": 4}), ("mixer", None)])
def test_patch_refuses_a_model_without_fusable_attention(attention, options):
    if options is None:  # the Mixer has no heads
        model = create_model("vix_cifar", attention=attention, img_size=4, depth=1, embed_dim=32)
    else:
        model = create_model("vix_cifar", attention=attention, img_size=4, depth=1, embed_dim=32, num_heads=2,
                             head_dim=16, mlp_dim=32, **options)
    with pytest.raises(TypeError, match="found no module it can fuse"):
        armour_kernels.patch(model, backend="reference")


def test_patch_leaves_the_global_rng_alone():
    model = tiny_vix("performer")
    state = torch.random.get_rng_state()
    armour_kernels.patch(model, backend="reference")
    assert torch.equal(torch.random.get_rng_state(), state)


def test_fused_vix_attention_refuses_attention_dropout_in_training():
    module = FusedViXAttention(32, heads=2, dim_head=16, dropout=0.1, backend="reference")
    x = torch.randn(1, 5, 32)
    with pytest.raises(NotImplementedError, match="dropout"):
        module(x)
    assert module.eval()(x).shape == x.shape


@requires_cuda
@pytest.mark.parametrize("attention, rope, armour", [("softmax", False, False), ("softmax", True, True),
                                                     ("nystrom", False, False), ("nystrom", True, True),
                                                     ("performer", False, False), ("performer", True, True)])
def test_gpu_paper_size_layer(attention, rope, armour):
    """The paper's CIFAR-10 shape (1025 tokens, 4 heads × 32, 64 landmarks, 110 features), one layer, fp32."""
    torch.manual_seed(0)
    model = create_model("vix_cifar", attention=attention, rope=rope, armour=armour, depth=1).cuda().eval()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    out, grads = forward_backward(model, x)
    armour_kernels.patch(model)  # auto: Triton on CUDA
    assert type(model.transformer.layers[0][0].fn) is FUSED[attention]
    out_p, grads_p = forward_backward(model, x)
    assert_close(out_p, out, msg="output")
    for name, grad in grads.items():
        assert_close(grads_p[name], grad, msg=name)

