"""python_ref models: exact parameter counts (docs/models.md), timm equivalence, BN folding,
the attention modules' projection layouts, argument errors, and gradients of every variant.

Counts are taken on the meta device (shapes only); forwards use tiny configurations.
"""
import pytest
import torch
import torch.nn as nn

import python_ref
from python_ref import create_model, fold_batchnorm, summary_param_count
from python_ref.attention import DEIT_VARIANTS
from python_ref.levit import LEVIT_VARIANTS, BNLinear, ConvBN, LinearBN
from python_ref.vix import VIX_ATTENTIONS
from param_counts import DEIT_COUNTS  # docs/attention.md: (regular, two-projection)


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")

TWO_PROJECTION = [v for v in DEIT_VARIANTS if v != "regular"]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def on_meta(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


# ----------------------------------------------------------------------------- parameter counts


LEVIT_FOLDED = {  # docs/levit.md, after BN folding: (regular, armour, armour_plus)
    "levit_128s": (7_756_466, 7_468_818, 7_181_170),
    "levit_128": (9_188_864, 8_728_576, 8_268_288),
    "levit_192": (10_918_613, 10_363_861, 9_809_109),
    "levit_256": (18_856_276, 17_903_700, 16_951_124),
    "levit_384": (39_074_100, 37_006_260, 34_938_420),
}

LEVIT_UNFOLDED = {  # docs/levit.md, training models with BN weight and bias
    "levit_128s": (7_777_058, 7_488_482, 7_199_906),
    "levit_384": (39_128_836, 37_057_540, 34_986_244),
}

VIX_COUNTS = {  # docs/models.md: (attention, hybrid) → (torchsummary, all trainable)
    ("softmax", False): (530_442, 661_770),
    ("performer", False): (531_978, 663_306),
    ("linformer", False): (415_754, 809_482),
    ("nystrom", False): (530_970, 662_298),
    ("fnet", False): (267_786, 399_114),
    ("mixer", False): (8_533_002, 8_533_002),
    ("softmax", True): (623_178, 754_506),
    ("performer", True): (624_714, 756_042),
    ("linformer", True): (508_490, 902_218),
    ("nystrom", True): (623_706, 755_034),
    ("fnet", True): (360_522, 491_850),
    ("mixer", True): (8_625_738, 8_625_738),
}


@pytest.mark.parametrize("name", DEIT_COUNTS)
@pytest.mark.parametrize("attention", list(DEIT_VARIANTS))
def test_deit_parameter_count(name, attention):
    expected = DEIT_COUNTS[name][0 if attention == "regular" else 1]
    assert n_params(on_meta(name, attention=attention)) == expected


@pytest.mark.parametrize("name", LEVIT_FOLDED)
@pytest.mark.parametrize("attention", list(LEVIT_VARIANTS))
def test_levit_folded_parameter_count(name, attention):
    model = on_meta(name, attention=attention).eval()
    expected = LEVIT_FOLDED[name][list(LEVIT_VARIANTS).index(attention)]
    assert n_params(fold_batchnorm(model)) == expected


@pytest.mark.parametrize("name", LEVIT_UNFOLDED)
@pytest.mark.parametrize("attention", list(LEVIT_VARIANTS))
def test_levit_unfolded_parameter_count(name, attention):
    expected = LEVIT_UNFOLDED[name][list(LEVIT_VARIANTS).index(attention)]
    assert n_params(on_meta(name, attention=attention)) == expected


@pytest.mark.parametrize("attention, hybrid", VIX_COUNTS)
def test_vix_parameter_counts(attention, hybrid):
    model = on_meta("vix_cifar", attention=attention, hybrid=hybrid)
    assert (summary_param_count(model), n_params(model)) == VIX_COUNTS[attention, hybrid]


@pytest.mark.parametrize("attention", ["softmax", "performer", "linformer", "nystrom"])
@pytest.mark.parametrize("hybrid", [False, True])
def test_vix_rope_replaces_position_embedding(attention, hybrid):
    """RoPE adds no parameter and drops the (1025, 128) position embedding (paper §5.4)."""
    summary, total = VIX_COUNTS[attention, hybrid]
    model = on_meta("vix_cifar", attention=attention, hybrid=hybrid, rope=True)
    assert summary_param_count(model) == summary
    assert n_params(model) == total - 1025 * 128


# ----------------------------------------------------------------------------- timm equivalence

@pytest.mark.parametrize("name", list(DEIT_COUNTS) + list(LEVIT_FOLDED))
def test_state_dict_layout_matches_timm(name, timm):
    """Full-size models: the same state-dict keys and shapes as timm (built on meta, no forward)."""
    with torch.device("meta"):
        ours = create_model(name).state_dict()
        theirs = timm.create_model(name).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def randomize_(model, seed=0):
    """Random weights and BN statistics, so no branch is silenced by timm's zero BN init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.2)
    return model


TIMM_SMALL = [
    ("deit_tiny_patch16_224", dict(img_size=64, depth=2)),
    ("deit_small_distilled_patch16_224", dict(img_size=32, depth=1, num_classes=7)),
    ("levit_128s", dict(img_size=64, num_classes=5)),
    ("levit_192", dict(img_size=64, depth=(1, 1, 1))),
]


@pytest.mark.parametrize("name, kwargs", TIMM_SMALL)
def test_same_output_as_timm(name, kwargs, timm):
    theirs = randomize_(timm.create_model(name, **kwargs)).eval()
    ours = create_model(name, **kwargs).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, kwargs["img_size"], kwargs["img_size"])
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(ours(x), expected, atol=1e-5 * max(1.0, expected.abs().max().item()), rtol=1e-5)


# ----------------------------------------------------------------------------- attention module layouts

def naive_deit_attention(module, x):
    """The docs/attention.md formula per head with explicit weight slices: the contract of `qkv`'s layout."""
    C = x.shape[-1]
    H, D, s = module.num_heads, module.head_dim, module.scale
    w, b = module.qkv.weight, module.qkv.bias
    first, second = x @ w[:C].T + b[:C], x @ w[C:2 * C].T + b[C:2 * C]
    variant = module.variant
    if variant == "regular":
        q, k, v = first, second, x @ w[2 * C:].T + b[2 * C:]
    elif variant in ("armour", "shared_kv"):
        q, k = first, second
        v = q if variant == "armour" else k
    else:
        q, k, v = first, first, second
    heads = []
    for h in range(H):
        sl = slice(h * D, (h + 1) * D)
        scores = s * torch.einsum("bid,bjd->bij", q[..., sl], k[..., sl])
        if variant == "shared_qk_nodiag" and x.shape[1] > 1:
            scores = scores - torch.diag(torch.full((x.shape[1],), float("inf"), dtype=x.dtype))
        heads.append(torch.softmax(scores, -1) @ v[..., sl])
    return module.proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("variant", list(DEIT_VARIANTS))
def test_deit_attention_module_contract(variant):
    model = create_model("deit_tiny_patch16_224", attention=variant, img_size=32, depth=1).double().eval()
    attn = model.blocks[0].attn
    assert isinstance(attn, python_ref.deit.Attention)
    assert attn.variant == variant and attn.num_heads == 3 and attn.head_dim == 64
    assert attn.scale == 64 ** -0.5
    assert attn.qkv.out_features == (3 if variant == "regular" else 2) * 192
    for name in ("attn_drop", "proj", "proj_drop"):
        assert isinstance(getattr(attn, name), nn.Module)
    x = torch.randn(2, 5, 192, dtype=torch.float64)
    torch.testing.assert_close(attn(x), naive_deit_attention(attn, x))


def naive_levit_attention(module, x):
    """docs/levit.md per head: qkv viewed (B, N, H, ·) split [q D, k D, rest]; value per variant; bias table[h, idx]."""
    B, N, _ = x.shape
    D, H = module.key_dim, module.num_heads
    per_head = module.qkv(x).view(B, N, H, -1)
    idx = torch.tensor([[abs(i // module.resolution - j // module.resolution) * module.resolution
                         + abs(i % module.resolution - j % module.resolution) for j in range(N)] for i in range(N)])
    heads = []
    for h in range(H):
        q, k, rest = per_head[:, :, h, :D], per_head[:, :, h, D:2 * D], per_head[:, :, h, 2 * D:]
        value = {"regular": rest, "armour": torch.cat([q, rest], -1), "armour_plus": torch.cat([q, k], -1)}
        scores = module.scale * torch.einsum("bid,bjd->bij", q, k) + module.attention_biases[h][idx]
        heads.append(torch.softmax(scores, -1) @ value[module.variant])
    return module.proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("variant", list(LEVIT_VARIANTS))
def test_levit_attention_module_contract(variant):
    model = create_model("levit_128s", attention=variant, img_size=64, num_classes=3)
    model = randomize_(model).double().eval()
    attn = model.stages[0].blocks[0].attn
    assert isinstance(attn, python_ref.levit.Attention)
    assert (attn.num_heads, attn.key_dim, attn.val_dim, attn.variant) == (4, 16, 32, variant)
    assert attn.qkv.linear.out_features == 4 * {"regular": 64, "armour": 48, "armour_plus": 32}[variant]
    assert isinstance(attn.qkv.bn, nn.BatchNorm1d)
    assert attn.attention_biases.shape == (4, 16) and attn.attention_bias_idxs.shape == (16, 16)
    assert "attention_bias_idxs" not in "".join(model.state_dict())  # non-persistent, as timm
    assert isinstance(attn.proj[0], nn.Hardswish) and isinstance(attn.proj[1], LinearBN)
    down = model.stages[1].downsample.attn_downsample
    assert down.attention_bias_idxs.shape == (4, 16) and down.kv.linear.out_features == 8 * (16 + 64)
    x = torch.randn(2, 16, 128, dtype=torch.float64)
    torch.testing.assert_close(attn(x), naive_levit_attention(attn, x))


# ----------------------------------------------------------------------------- BN folding

@pytest.mark.parametrize("attention", list(LEVIT_VARIANTS))
def test_fold_batchnorm_is_exact(attention):
    model = randomize_(create_model("levit_128s", attention=attention, img_size=64, depth=1, num_classes=5)).eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, (LinearBN, ConvBN, BNLinear, nn.BatchNorm1d, nn.BatchNorm2d))
                   for m in folded.modules())
    assert any(isinstance(m, LinearBN) for m in model.modules()), "the input model must be left unfolded"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(folded(x), expected, atol=2e-5 * expected.abs().max().item(), rtol=1e-5)
        refolded = fold_batchnorm(folded)  # nothing left to fold: same function, same parameters
        torch.testing.assert_close(refolded(x), folded(x), atol=0, rtol=0)
    assert n_params(refolded) == n_params(folded)
    assert not folded.training


def test_fold_batchnorm_refuses_training_mode():
    model = create_model("levit_128s", img_size=64, depth=1)
    with pytest.raises(RuntimeError, match="eval"):
        fold_batchnorm(model)
    with pytest.raises(TypeError):
        fold_batchnorm("levit_128s")


def test_fold_single_layers_float64():
    """Each folding rule on its own, in float64, against the unfolded layer."""
    torch.manual_seed(0)
    for layer, x in [(LinearBN(6, 5), torch.randn(2, 3, 6)), (ConvBN(3, 4, 3, 2, 1), torch.randn(2, 3, 7, 7)),
                     (BNLinear(6, 4), torch.randn(3, 6))]:
        layer = randomize_(layer).double().eval()
        x = x.double()
        torch.testing.assert_close(fold_batchnorm(layer)(x), layer(x), atol=1e-12, rtol=1e-12)


# ----------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("call, error, match", [
    (lambda: create_model("deit_huge"), ValueError, "levit_128s"),
    (lambda: create_model("deit_tiny_patch16_224", attention="armour_plus"), ValueError, "shared_kv"),
    (lambda: create_model("levit_128", attention="shared_kv"), ValueError, "armour_plus"),
    (lambda: create_model("vix_cifar", attention="regular"), ValueError, "nystrom"),
    (lambda: create_model("vix_cifar", attention="fnet", rope=True), ValueError, "rope"),
    (lambda: create_model("vix_cifar", attention="mixer", rope=True), ValueError, "rope"),
    (lambda: create_model("vix_cifar", hybrid=True, patch_size=2), ValueError, "patch_size"),
    (lambda: create_model("deit_tiny_patch16_224", pretrained=True), ValueError, "pretrained"),
    (lambda: create_model("deit_tiny_patch16_224", num_heads=5), ValueError, "divisible"),
    (lambda: create_model("deit_tiny_patch16_224", img_size=40), ValueError, "divisible"),
    (lambda: create_model("levit_128s", img_size=40), ValueError, "16"),
    (lambda: create_model("levit_128s", attention="armour_plus", attn_ratio=3), ValueError, "attn_ratio"),
    (lambda: create_model("levit_128s", depth=(1, 2)), ValueError, "depth"),
    (lambda: create_model("deit_tiny_patch16_224", no_such_option=1), TypeError, "no_such_option"),
])
def test_bad_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("name, kwargs, good", [
    ("deit_tiny_patch16_224", dict(img_size=32, depth=1), (1, 3, 32, 32)),
    ("levit_128s", dict(img_size=32, depth=1), (1, 3, 32, 32)),
    ("vix_cifar", dict(img_size=8, depth=1), (1, 3, 8, 8)),
    ("vix_cifar", dict(attention="mixer", img_size=8, depth=1), (1, 3, 8, 8)),
])
def test_wrong_input_shape_is_a_clear_error(name, kwargs, good):
    model = create_model(name, **kwargs).eval()
    B, C, H, W = good
    for bad in [(B, C, H + 16, W), (B, C + 1, H, W), (C, H, W)]:
        with pytest.raises(ValueError, match="expects input of shape"):
            model(torch.randn(bad))


# ----------------------------------------------------------------------------- gradients

def assert_all_gradients_finite(model, x):
    model.zero_grad()
    model(x).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing}"
    assert not bad, f"non-finite gradient for {bad}"


@pytest.mark.parametrize("variant", list(DEIT_VARIANTS))
def test_deit_forward_backward(variant):
    torch.manual_seed(0)
    model = create_model("deit_tiny_distilled_patch16_224", attention=variant, img_size=32, depth=2, num_classes=4)
    assert_all_gradients_finite(model, torch.randn(2, 3, 32, 32))
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", list(LEVIT_VARIANTS))
def test_levit_forward_backward(variant):
    torch.manual_seed(0)
    model = randomize_(create_model("levit_128s", attention=variant, img_size=64, depth=1, num_classes=4))
    assert_all_gradients_finite(model.train(), torch.randn(2, 3, 64, 64))
    attn = model.stages[0].blocks[0].attn
    assert attn.qkv.linear.weight.grad.abs().sum() > 0 and attn.attention_biases.grad.abs().sum() > 0


@pytest.mark.parametrize("attention", VIX_ATTENTIONS)
@pytest.mark.parametrize("hybrid", [False, True])
def test_vix_forward_backward(attention, hybrid):
    torch.manual_seed(0)
    kwargs = dict(img_size=8, depth=1, hybrid=hybrid)
    if attention not in ("fnet", "mixer"):
        kwargs["rope"] = hybrid  # one run with the position embedding, one with RoPE
    if attention == "nystrom":
        kwargs["num_landmarks"] = 16  # 65 tokens: front-padded to 80
    model = create_model("vix_cifar", attention=attention, **kwargs)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert_all_gradients_finite(model, torch.randn(2, 3, 8, 8))


# ----------------------------------------------------------------------------- ViX with Armour

@pytest.mark.parametrize("attention, value_projection", [
    ("softmax", 4 * 128 * 128), ("performer", 4 * (128 * 128 + 128)), ("nystrom", 4 * 128 * 128)])
def test_vix_armour_drops_the_value_projection(attention, value_projection):
    summary, total = VIX_COUNTS[attention, False]
    model = on_meta("vix_cifar", attention=attention, armour=True)
    assert summary_param_count(model) == summary - value_projection
    assert n_params(model) == total - value_projection


@pytest.mark.parametrize("attention", ["softmax", "performer", "nystrom"])
def test_vix_armour_value_is_the_unrotated_query(attention):
    """Armour + RoPE: scores from rotated q, k; the value is the query straight out of the projection."""
    from python_ref.attention import attention as softmax_attention
    from python_ref.nystrom import nystrom_attention
    from python_ref.performer import performer_attention
    from python_ref.rope import apply_rope, rope_angles
    torch.manual_seed(0)
    model = create_model("vix_cifar", attention=attention, armour=True, rope=True, img_size=4, depth=1,
                         num_landmarks=4).double()
    layer = model.transformer.layers[0][0].fn
    x = torch.randn(2, 17, 128, dtype=torch.float64)
    if attention == "performer":
        q, k = layer.to_q(x), layer.to_k(x)
    else:
        q, k = layer.to_qkv(x).chunk(2, dim=-1)
    q, k = (t.view(2, 17, 4, 32).transpose(1, 2) for t in (q, k))
    angles = rope_angles(17, 32, dtype=torch.float64)
    rq, rk = apply_rope(q, angles), apply_rope(k, angles)
    if attention == "softmax":
        out = softmax_attention(rq, rk, q)
    elif attention == "nystrom":
        out = nystrom_attention(rq, rk, q, num_landmarks=4, conv_weight=layer.res_conv.weight)
    else:
        out = performer_attention(rq, rk, q, projection=layer.fast_attention.projection_matrix)
    expected = layer.to_out(out.transpose(1, 2).reshape(2, 17, 128))
    torch.testing.assert_close(layer(x), expected)
    assert_all_gradients_finite(model, torch.randn(2, 3, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("attention", ["linformer", "fnet", "mixer"])
def test_vix_armour_needs_a_value_projection(attention):
    with pytest.raises(ValueError, match="armour"):
        create_model("vix_cifar", attention=attention, armour=True)
