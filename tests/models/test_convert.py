"""armourize: parameter counts of docs/models.md, exact outputs, train-mode/leaf guarantees, errors."""
import copy

import pytest
import torch

import python_ref
from armour_kernels import armourize, fold_batchnorm, patch, unpatch
from armour_kernels.nn.attention import FusedDeiTAttention
from armour_kernels.nn.levit import LevitAttention
from param_counts import DEIT_COUNTS  # docs/attention.md: (regular, two-projection)

timm = pytest.importorskip("timm")


def count(model):
    return sum(p.numel() for p in model.parameters())


LEVIT_COUNTS = {  # docs/levit.md: (unfolded training counts, folded counts), each regular / armour / armour_plus
    "levit_128s": ((7_777_058, 7_488_482, 7_199_906), (7_756_466, 7_468_818, 7_181_170)),
    "levit_384": ((39_128_836, 37_057_540, 34_986_244), (39_074_100, 37_006_260, 34_938_420)),
}
LEVIT_FOLDED = {  # docs/levit.md folded counts (regular / armour / armour_plus) of the other sizes
    "levit_128": (9_188_864, 8_728_576, 8_268_288),
    "levit_192": (10_918_613, 10_363_861, 9_809_109),
    "levit_256": (18_856_276, 17_903_700, 16_951_124),
}


@pytest.mark.parametrize("name", list(DEIT_COUNTS))
def test_deit_counts_timm(name):
    regular, two = DEIT_COUNTS[name]
    with torch.device("meta"):  # shapes only: no time spent initialising weights
        model = timm.create_model(name)
    assert count(model) == regular
    assert count(armourize(model, backend=None)) == two


@pytest.mark.parametrize("name", list(LEVIT_COUNTS))
def test_levit_counts(name):
    unfolded, folded = LEVIT_COUNTS[name]
    with torch.device("meta"):  # shapes only
        sources = (timm.create_model(name), python_ref.create_model(name))
    for source in sources:
        assert count(source) == unfolded[0]
        for variant, n_unfolded, n_folded in zip(("armour", "armour_plus"), unfolded[1:], folded[1:]):
            model = armourize(source, variant, backend=None)
            assert count(model) == n_unfolded
            if source is sources[0]:
                with torch.device("meta"):
                    ref = python_ref.create_model(name, attention=variant)
                assert {k: v.shape for k, v in model.state_dict().items()} == \
                       {k: v.shape for k, v in ref.state_dict().items()}
            assert count(fold_batchnorm(model.eval())) == n_folded


@pytest.mark.parametrize("name", list(LEVIT_FOLDED))
def test_levit_folded_counts(name):
    with torch.device("meta"):
        source = timm.create_model(name)
    for variant, expected in zip(("armour", "armour_plus"), LEVIT_FOLDED[name][1:]):
        assert count(fold_batchnorm(armourize(source, variant, backend=None).eval())) == expected


def _randomise_bn(model):
    """Non-trivial BatchNorm statistics and affine parameters, so slicing mistakes show."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d) or isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g) * 0.5 + 1)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            if hasattr(m, "attention_biases"):
                m.attention_biases.copy_(torch.randn(m.attention_biases.shape, generator=g))
    return model


def _deit_equivalent(model):
    """A regular DeiT whose W_V (and b_V) is W_Q: it computes softmax(s·QKᵀ)·Q, Armour's output."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for m in twin.modules():
            if hasattr(m, "qkv") and isinstance(m.qkv, torch.nn.Linear):
                c = m.qkv.in_features
                m.qkv.weight[2 * c:] = m.qkv.weight[:c]
                m.qkv.bias[2 * c:] = m.qkv.bias[:c]
    return twin


def _levit_equivalent(model, variant):
    """A regular LeViT whose per-head v rows are [q, v_half] (armour) or [q, k] (armour_plus)."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for m in twin.modules():
            if type(m).__name__ != "Attention" or not hasattr(m, "attention_biases"):
                continue
            D, h = m.key_dim, m.num_heads
            per = 4 * D
            tensors = [m.qkv.linear.weight, m.qkv.bn.weight, m.qkv.bn.bias, m.qkv.bn.running_mean,
                       m.qkv.bn.running_var]
            for t in tensors:
                t4 = t.view(h, per, *t.shape[1:])
                second = t4[:, 2 * D:3 * D].clone() if variant == "armour" else t4[:, D:2 * D].clone()
                t4[:, 3 * D:] = second
                t4[:, 2 * D:3 * D] = t4[:, :D]
    return twin


@pytest.mark.parametrize("source", ["timm", "python_ref"])
def test_deit_output_is_armour(source):
    torch.manual_seed(0)
    kw = dict(img_size=32, depth=2, num_classes=10)
    model = (timm.create_model("deit_tiny_patch16_224", **kw) if source == "timm"
             else python_ref.create_model("deit_tiny_patch16_224", **kw)).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = _deit_equivalent(model)(x)
    plain = armourize(model, backend=None)
    fused = armourize(model, backend="reference")
    assert any(isinstance(m, FusedDeiTAttention) and m.variant == "armour" for m in fused.modules())
    torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["armour", "armour_plus"])
@pytest.mark.parametrize("source", ["timm", "python_ref"])
def test_levit_output_is_armour(source, variant):
    torch.manual_seed(0)
    kw = dict(img_size=64, num_classes=10)
    model = (timm.create_model("levit_128s", **kw) if source == "timm"
             else python_ref.create_model("levit_128s", **kw))
    model = _randomise_bn(model).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = _levit_equivalent(model, variant)(x)
    fused = armourize(model, variant, backend="reference")
    assert any(isinstance(m, LevitAttention) and m.value == {"armour": "q+v", "armour_plus": "q+k"}[variant]
               for m in fused.modules())
    torch.testing.assert_close(fused(x), expected, atol=1e-4, rtol=1e-4)
    assert type(unpatch(fused).stages[0].blocks[0].attn) is python_ref.levit.Attention


def test_levit_folded_input():
    """A BN-folded LeViT (qkv = Linear with bias, bn = Identity) converts by slicing the folded rows."""
    torch.manual_seed(0)
    model = _randomise_bn(python_ref.create_model("levit_128s", img_size=64, num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = _levit_equivalent(model, "armour")(x)
    folded = armourize(fold_batchnorm(copy.deepcopy(model)), "armour", backend="reference")
    torch.testing.assert_close(folded(x), expected, atol=1e-4, rtol=1e-4)


def test_ready_to_fine_tune():
    model = python_ref.create_model("deit_tiny_patch16_224", img_size=32, depth=1, num_classes=4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = armourize(model, backend="reference")
    assert out.training and all(m.training for m in out.modules())
    params = list(out.parameters())
    assert all(p.is_leaf and p.requires_grad for p in params)
    source_ptrs = {p.data_ptr() for p in model.parameters()}
    assert not any(p.data_ptr() in source_ptrs for p in params)
    out(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in params)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    eval_model = armourize(model.eval(), backend=None)
    assert not any(m.training for m in eval_model.modules())


def test_patched_input_and_shared_variants():
    model = patch(python_ref.create_model("deit_tiny_patch16_224", img_size=32, depth=1), backend="reference")
    out = armourize(model, "shared_qk", backend=None)
    attn = out.blocks[0].attn
    assert type(attn).__name__ == "Attention" and attn.variant == "shared_qk"
    c = attn.qkv.in_features
    src = model.blocks[0].attn.qkv.weight
    torch.testing.assert_close(attn.qkv.weight, torch.cat([src[:c], src[2 * c:]]))


def test_errors():
    deit = python_ref.create_model("deit_tiny_patch16_224", img_size=32, depth=1)
    levit = python_ref.create_model("levit_128s", img_size=64)
    with pytest.raises(ValueError, match="unknown variant"):
        armourize(deit, "armor")
    with pytest.raises(ValueError, match="LeViT"):
        armourize(deit, "armour_plus")
    with pytest.raises(ValueError, match="DeiT"):
        armourize(levit, "shared_kv")
    with pytest.raises(TypeError, match="no DeiT"):
        armourize(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="already"):
        armourize(armourize(deit, backend=None))
    with pytest.raises(TypeError, match="conv mode"):
        armourize(timm.create_model("levit_conv_128s", img_size=64))
