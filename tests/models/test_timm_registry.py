"""armour_kernels.timm: every armour_* name builds through timm.create_model, on the fused path."""
import pytest
import torch

timm = pytest.importorskip("timm")
import armour_kernels.timm as ak_timm  # noqa: E402  (registers the names)
from armour_kernels import fold_batchnorm  # noqa: E402
from armour_kernels.nn.attention import FusedDeiTAttention  # noqa: E402
from armour_kernels.nn.levit import LevitAttention  # noqa: E402

DEIT = {  # docs/attention.md two-projection counts
    "armour_deit_tiny_patch16_224": 5_272_744,
    "armour_deit_small_patch16_224": 20_276_584,
    "armour_deit_base_patch16_224": 79_480_552,
    "armour_deit_tiny_distilled_patch16_224": 5_466_128,
    "armour_deit_small_distilled_patch16_224": 20_662_352,
    "armour_deit_base_distilled_patch16_224": 80_251_088,
}
LEVIT_FOLDED = {  # docs/levit.md, counted after BN folding
    "armour_levit_128s": 7_468_818, "armour_levit_128": 8_728_576, "armour_levit_192": 10_363_861,
    "armour_levit_256": 17_903_700, "armour_levit_384": 37_006_260,
    "armour_plus_levit_128s": 7_181_170, "armour_plus_levit_128": 8_268_288, "armour_plus_levit_192": 9_809_109,
    "armour_plus_levit_256": 16_951_124, "armour_plus_levit_384": 34_938_420,
}
LEVIT_UNFOLDED = {"armour_levit_128s": 7_488_482, "armour_plus_levit_128s": 7_199_906,
                  "armour_levit_384": 37_057_540, "armour_plus_levit_384": 34_986_244}


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_all_names_registered():
    assert set(ak_timm.MODEL_NAMES) == set(DEIT) | set(LEVIT_FOLDED)
    listed = set(timm.list_models("armour_*"))
    assert set(ak_timm.MODEL_NAMES) <= listed


@pytest.mark.parametrize("name", list(DEIT) + list(LEVIT_FOLDED))
def test_full_size_counts(name):
    with torch.device("meta"):  # shapes only
        model = timm.create_model(name, backend="reference")
    fused = FusedDeiTAttention if "deit" in name else LevitAttention
    assert any(isinstance(m, fused) for m in model.modules())
    if name in DEIT:
        assert count(model) == DEIT[name]
    else:
        if name in LEVIT_UNFOLDED:
            assert count(model) == LEVIT_UNFOLDED[name]
        assert count(fold_batchnorm(model.eval())) == LEVIT_FOLDED[name]


@pytest.mark.parametrize("name", list(DEIT) + list(LEVIT_FOLDED))
def test_reduced_forward_reference(name):
    torch.manual_seed(0)
    if "deit" in name:
        kw, size = dict(img_size=32, depth=1, num_classes=5), 32
    else:
        kw, size = dict(img_size=32, depth=(1, 1, 1), num_classes=5), 32
    model = timm.create_model(name, backend="reference", **kw).eval()
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["armour_deit_tiny_patch16_224", "armour_plus_levit_128s"])
def test_reduced_forward_triton_matches_reference(name):
    """The Triton kernels (interpreter on CPU) give the reference backend's output."""
    kw = dict(img_size=32, depth=1 if "deit" in name else (1, 1, 1), num_classes=5)
    torch.manual_seed(0)
    ref = timm.create_model(name, backend="reference", **kw).eval()
    fused = timm.create_model(name, backend="triton", **kw).eval()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref(x), atol=1e-4, rtol=1e-4)


def test_pretrained_and_unknown():
    with pytest.raises(ValueError, match="no pretrained"):
        timm.create_model("armour_deit_tiny_patch16_224", pretrained=True)
    with pytest.raises(ValueError, match="unknown Armour model"):
        ak_timm.create_armour_model("armour_deit_huge")
    with pytest.raises(ValueError, match="backend"):
        timm.create_model("armour_levit_128s", backend="cuda-magic")
