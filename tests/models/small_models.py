"""Small models the serving tests compile (one or two blocks, 32×32 or 64×64 images), so that inductor
builds in well under a minute on 2 cores: weights and statistics drawn so that no layer is trivial."""
import pytest
import torch

import python_ref


def small_timm_levit():
    """timm LeViT-128S, one block per stage, with BatchNorm statistics and bias tables that are not trivial."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", img_size=64, depth=(1, 1, 1), num_classes=10).eval()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "attention_biases"):
                m.attention_biases.normal_()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model


def small_armour_ti():
    torch.manual_seed(0)
    return python_ref.create_model("deit_tiny_patch16_224", attention="armour", img_size=32, patch_size=8, depth=2,
                                   num_classes=10).eval()


def small_timm_deit(**kwargs):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10,
                              **kwargs).eval()
    with torch.no_grad():  # LayerNorms that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    return model
