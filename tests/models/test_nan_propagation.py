"""A NaN pixel gives NaN logits, as timm's own model does, for LeViT-128S and DeiT-Ti patched on the
cpu and reference backends (eval mode, small random-init models); the other image of the batch is
untouched. The fused attention once returned exactly 0 for every NaN row, so a NaN image came out
as a confident class (docs/numerics.md)."""
import pytest
import timm
import torch

import armour_kernels
from helpers import backend_params

# (timm name, image size): LeViT's attention biases are laid out for 224; DeiT runs at 32 (4 patches)
MODELS = [("levit_128s", 224), ("deit_tiny_patch16_224", 32)]


@pytest.mark.parametrize("name, size", MODELS, ids=[m for m, _ in MODELS])
@pytest.mark.parametrize("backend", backend_params(("cpu", "reference")))
def test_a_nan_pixel_gives_nan_logits(backend, name, size):
    torch.manual_seed(0)
    kw = {"img_size": size} if size != 224 else {}
    model = timm.create_model(name, pretrained=False, **kw).eval()
    x = torch.randn(2, 3, size, size)
    x[0, 1, size // 2, size // 3] = float("nan")
    with torch.no_grad():
        expected = model(x)
        patched = armour_kernels.patch(model, backend=backend)
        got = patched(x)
    assert expected[0].isnan().all() and got[0].isnan().all(), "the NaN image must give NaN logits"
    assert torch.isfinite(got[1]).all(), "the clean image of the batch must stay finite"
    torch.testing.assert_close(got[1], expected[1], atol=1e-3, rtol=1e-3)
