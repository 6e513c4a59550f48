"""The ViX attention layers against the lucidrains packages the paper's code used (optional).

Runs only where nystrom-attention 0.0.14, performer-pytorch, linformer and mlp-mixer-pytorch are
importable (they are not project dependencies): load their state dict strictly, same output.
"""
import re

import pytest
import torch

from python_ref.vix import LinformerSelfAttention, MLPMixer, NystromAttention, PerformerSelfAttention


def same_function(theirs, ours, x):
    theirs, ours = theirs.double().eval(), ours.double().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-12, rtol=1e-12)


def test_nystrom_matches_nystrom_attention_0_0_14():
    lucid = pytest.importorskip("nystrom_attention")
    x = torch.randn(2, 70, 32, dtype=torch.float64)  # 70 tokens, 16 landmarks: front-padded
    same_function(lucid.NystromAttention(dim=32, dim_head=8, heads=4, num_landmarks=16),
                  NystromAttention(32, 8, 4, 16, mode="seed"), x)


@pytest.mark.parametrize("generalized", [False, True])
def test_performer_matches_performer_pytorch(generalized):
    lucid = pytest.importorskip("performer_pytorch")
    x = torch.randn(2, 20, 32, dtype=torch.float64)
    same_function(lucid.SelfAttention(dim=32, heads=4, dim_head=8, qkv_bias=True, generalized_attention=generalized),
                  PerformerSelfAttention(32, 4, 8, generalized_attention=generalized), x)


@pytest.mark.parametrize("one_kv_head, share_kv", [(True, True), (False, False)])
def test_linformer_matches_linformer(one_kv_head, share_kv):
    lucid = pytest.importorskip("linformer")
    x = torch.randn(2, 30, 32, dtype=torch.float64)
    same_function(lucid.LinformerSelfAttention(dim=32, seq_len=30, k=8, heads=4, dim_head=8, one_kv_head=one_kv_head,
                                               share_kv=share_kv),
                  LinformerSelfAttention(32, 30, 8, 4, 8, one_kv_head=one_kv_head, share_kv=share_kv), x)


def test_mixer_matches_mlp_mixer_pytorch():
    lucid = pytest.importorskip("mlp_mixer_pytorch")
    depth = 2
    theirs = lucid.MLPMixer(image_size=8, channels=3, patch_size=1, dim=16, depth=depth, num_classes=10,
                            expansion_factor=4, expansion_factor_token=1).double().eval()
    ours = MLPMixer(img_size=8, embed_dim=16, depth=depth).double().eval()

    def rename(key):  # their nn.Sequential indices → our module names
        index, rest = key.split(".", 1)
        index = int(index)
        if index == 1:
            return "to_patch_embedding.1." + rest
        if index == 2 + depth:
            return "norm." + rest
        if index == 4 + depth:
            return "head." + rest
        return f"layers.{index - 2}." + re.sub(r"^(\d+)\.fn\.", r"\1.fn.net.", rest)

    ours.load_state_dict({rename(k): v for k, v in theirs.state_dict().items()}, strict=True)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-12, rtol=1e-12)
