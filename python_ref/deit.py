"""DeiT (timm `deit_*_patch16_224`, `deit_*_distilled_patch16_224`) with the attention variants of docs/attention.md.

With attention="regular" the state dict has exactly timm 1.0.31's keys and shapes, so
`model.load_state_dict(timm_model.state_dict())` works strictly and gives the same output.
The other variants (`armour`, `shared_kv`, `shared_qk`, `shared_qk_nodiag`) differ only in
`blocks.*.attn.qkv`: one Linear(C, 2C) instead of Linear(C, 3C).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .attention import DEIT_VARIANTS, attention_scores, value_tensor
from .layers import DropPath, check_image, drop_path_rates

LAYER_NORM_EPS = 1e-6  # timm's LayerNorm default for ViT / DeiT


class Attention(nn.Module):
    """Multi-head self-attention with one packed input projection `qkv` (the kernel surgery's contract).

    regular:    qkv = Linear(C, 3C), laid out [q | k | v]: reshape(B, N, 3, H, D)
    armour, shared_kv:            qkv = Linear(C, 2C), [q | k]: reshape(B, N, 2, H, D)
    shared_qk, shared_qk_nodiag:  qkv = Linear(C, 2C), [q | v]; the key is q
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, variant: str = "regular"):
        super().__init__()
        if variant not in DEIT_VARIANTS:
            raise ValueError(f"unknown attention {variant!r}; expected one of {tuple(DEIT_VARIANTS)}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.variant = variant
        self.num_projections = 3 if variant == "regular" else 2
        self.qkv = nn.Linear(dim, self.num_projections * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def split_projections(self, x):
        """(q, k, v) in (B, H, N, D) from the packed projection; k or v is None where the variant has none."""
        B, N, _ = x.shape
        parts = self.qkv(x).reshape(B, N, self.num_projections, self.num_heads, self.head_dim)
        parts = parts.permute(2, 0, 3, 1, 4).unbind(0)
        if self.variant == "regular":
            return parts
        first, second = parts
        if self.variant in ("armour", "shared_kv"):
            return first, second, None
        return first, first, second  # shared_qk*: the key is the query

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.split_projections(x)
        value, _, mask_diagonal = DEIT_VARIANTS[self.variant]
        scores = attention_scores(q, k, scale=self.scale, mask_diagonal=mask_diagonal)
        probs = self.attn_drop(scores.softmax(dim=-1))
        x = probs @ value_tensor(q, k, v, value)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))

    def extra_repr(self):
        return f"variant={self.variant!r}, num_heads={self.num_heads}, head_dim={self.head_dim}"


class Mlp(nn.Module):
    """fc1 → GELU → dropout → fc2 → dropout (timm's Mlp; its identity `norm` has no parameters)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, proj_drop=0.0, attn_drop=0.0,
                 drop_path=0.0, attention="regular"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop, variant=attention)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens: Conv2d(in_chans, C, patch, stride=patch), flattened to (B, N, C)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DeiT(nn.Module):
    """DeiT / ViT classifier with a class token (and a distillation token when `distilled`).

    Eval output of a distilled model is the mean of the two heads, as timm's.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0, pos_drop_rate=0.0,
                 proj_drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, attention="regular",
                 distilled=False):
        super().__init__()
        if attention not in DEIT_VARIANTS:
            raise ValueError(f"unknown attention {attention!r}; expected one of {tuple(DEIT_VARIANTS)}")
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.attention = attention
        self.distilled = distilled
        self.num_prefix_tokens = 2 if distilled else 1
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        num_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_drop_rate, attn_drop_rate, rates[i], attention)
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if distilled:
            self.head_dist = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """timm's default ViT init: truncated normal (std 0.02) weights, zero biases, tiny class token."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x):
        check_image(x, self.patch_embed.in_chans, self.patch_embed.img_size, type(self).__name__)
        x = self.patch_embed(x)
        prefix = [self.cls_token] + ([self.dist_token] if self.distilled else [])
        x = torch.cat([t.expand(x.shape[0], -1, -1) for t in prefix] + [x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        return self.norm(self.blocks(x))

    def forward_head(self, x):
        logits = self.head(self.head_drop(x[:, 0]))
        if not self.distilled:
            return logits
        return (logits + self.head_dist(self.head_drop(x[:, 1]))) / 2

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# timm's configurations of the DeiT models (docs/models.md).
DEIT_CONFIGS = {
    "deit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "deit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "deit_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "deit_tiny_distilled_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, distilled=True),
    "deit_small_distilled_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, distilled=True),
    "deit_base_distilled_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, distilled=True),
}
