"""LeViT (timm `levit_*`, linear mode) with the generalised Armour attention of docs/levit.md.

With attention="regular" the state dict has exactly timm 1.0.31's keys and shapes (the
`attention_bias_idxs` buffers are non-persistent, as in timm), so a timm checkpoint loads
strictly and gives the same output. `armour` and `armour_plus` change only the `qkv`
projection of the non-subsampling attention blocks:

    regular      qkv per head [q D, k D, v 2D]   value v
    armour       qkv per head [q D, k D, v D]    value concat(q, v)   (width 2D, q first)
    armour_plus  qkv per head [q D, k D]         value concat(q, k)

The subsampling attention (`AttentionDownsample`) is the same in all three.
Linear_BN / Conv2d_BN / BN_Linear are kept unfolded (training form); see fold.py.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from .attention import levit_attention, levit_bias_index
from .layers import DropPath, check_image

# attention name → the value source of python_ref.attention (docs/levit.md).
LEVIT_VARIANTS = {"regular": "v", "armour": "q+v", "armour_plus": "q+k"}


class LinearBN(nn.Module):
    """Linear (no bias) then BatchNorm1d over the features of every token (timm LinearNorm, `Linear_BN`)."""

    def __init__(self, in_features: int, out_features: int, bn_weight_init: float = 1.0):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def forward(self, x):  # x (B, N, C)
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class ConvBN(nn.Module):
    """Conv2d (no bias) then BatchNorm2d (timm ConvNorm, `Conv2d_BN`): the stem's layers."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int = 0):
        super().__init__()
        self.linear = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x):
        return self.bn(self.linear(x))


class BNLinear(nn.Module):
    """BatchNorm1d, dropout, then Linear (timm NormLinear, `BN_Linear`): the classifier heads."""

    def __init__(self, in_features: int, out_features: int, drop: float = 0.0):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.drop = nn.Dropout(drop)
        self.linear = nn.Linear(in_features, out_features)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        return self.linear(self.drop(self.bn(x)))


class Stem16(nn.Sequential):
    """Four stride-2 3×3 Conv2d_BN with Hardswish between them: image → (B, C, H/16, W/16)."""

    def __init__(self, in_chs: int, out_chs: int, act_layer=nn.Hardswish):
        super().__init__()
        widths = [in_chs, out_chs // 8, out_chs // 4, out_chs // 2, out_chs]
        for i in range(4):
            if i:
                self.add_module(f"act{i}", act_layer())
            self.add_module(f"conv{i + 1}", ConvBN(widths[i], widths[i + 1], 3, stride=2, padding=1))


class Subsample(nn.Module):
    """Keep every `stride`-th token of the resolution×resolution grid in each direction."""

    def __init__(self, stride: int, resolution: int):
        super().__init__()
        self.stride = stride
        self.resolution = resolution

    def forward(self, x):
        B, N, C = x.shape
        x = x.view(B, self.resolution, self.resolution, C)[:, ::self.stride, ::self.stride]
        return x.reshape(B, -1, C)


class Attention(nn.Module):
    """LeViT attention block core (no residual): qkv → softmax(s·qkᵀ + bias)·value → Hardswish → proj.

    Contract used by the kernel surgery: `num_heads`, `key_dim` (D), `val_dim` (output width per
    head, 2D in all three variants), `scale`, `variant`, `qkv` (LinearBN, or nn.Linear once folded)
    whose output viewed (B, N, H, -1) splits per head into [D, D, qkv_value_dim], `attention_biases`
    (H, R), `attention_bias_idxs` (N, N) int64, `proj` = Sequential(act, ln).
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int = 8, attn_ratio: float = 2.0,
                 resolution: int = 14, act_layer=nn.Hardswish, variant: str = "regular"):
        super().__init__()
        if variant not in LEVIT_VARIANTS:
            raise ValueError(f"unknown attention {variant!r}; expected one of {tuple(LEVIT_VARIANTS)}")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim ** -0.5
        self.variant = variant
        self.value = LEVIT_VARIANTS[variant]
        self.val_dim = int(attn_ratio * key_dim)
        self.val_attn_dim = self.val_dim * num_heads
        self.resolution = resolution
        # Width of the third per-head chunk of qkv: v (regular), v_half (armour), none (armour_plus).
        self.qkv_value_dim = {"v": self.val_dim, "q+v": self.val_dim - key_dim, "q+k": 0}[self.value]
        if self.value == "q+k" and self.val_dim != 2 * key_dim:
            raise ValueError(f"attention 'armour_plus' needs attn_ratio 2 (value = [q | k]), got {attn_ratio}")
        if self.value == "q+v" and self.qkv_value_dim <= 0:
            raise ValueError(f"attention 'armour' needs attn_ratio > 1 (value = [q | v_half]), got {attn_ratio}")
        self.qkv = LinearBN(dim, num_heads * (2 * key_dim + self.qkv_value_dim))
        self.proj = nn.Sequential(OrderedDict([
            ("act", act_layer()),
            ("ln", LinearBN(self.val_attn_dim, dim, bn_weight_init=0.0)),
        ]))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        self.register_buffer("attention_bias_idxs", levit_bias_index(resolution), persistent=False)

    def split_projections(self, x):
        """(q, k, v) in (B, H, N, ·) from the per-head interleaved qkv; v is None for armour_plus."""
        B, N, _ = x.shape
        qkv = self.qkv(x).view(B, N, self.num_heads, -1).transpose(1, 2)
        if self.qkv_value_dim == 0:
            q, k = qkv.split([self.key_dim, self.key_dim], dim=-1)
            return q, k, None
        return qkv.split([self.key_dim, self.key_dim, self.qkv_value_dim], dim=-1)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.split_projections(x)
        x = levit_attention(q, k, v, attention_biases=self.attention_biases,
                            bias_index=self.attention_bias_idxs, value=self.value, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(B, N, self.val_attn_dim))

    def extra_repr(self):
        return f"variant={self.variant!r}, num_heads={self.num_heads}, key_dim={self.key_dim}, val_dim={self.val_dim}"


class AttentionDownsample(nn.Module):
    """Shrinking attention: queries on the stride-2 subsampled grid, keys/values on the full grid.

    `kv` per head [k D, v val_dim]; `q` = Sequential(down, ln); bias table (H, res²) indexed (N_q, N_k).
    """

    def __init__(self, in_dim: int, out_dim: int, key_dim: int, num_heads: int = 8, attn_ratio: float = 4.0,
                 stride: int = 2, resolution: int = 14, act_layer=nn.Hardswish):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.val_attn_dim = self.val_dim * num_heads
        self.scale = key_dim ** -0.5
        self.stride = stride
        self.resolution = resolution
        self.kv = LinearBN(in_dim, num_heads * (key_dim + self.val_dim))
        self.q = nn.Sequential(OrderedDict([
            ("down", Subsample(stride, resolution)),
            ("ln", LinearBN(in_dim, num_heads * key_dim)),
        ]))
        self.proj = nn.Sequential(OrderedDict([
            ("act", act_layer()),
            ("ln", LinearBN(self.val_attn_dim, out_dim)),
        ]))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        self.register_buffer("attention_bias_idxs", levit_bias_index(resolution, stride), persistent=False)

    def forward(self, x):
        B, N, _ = x.shape
        k, v = self.kv(x).view(B, N, self.num_heads, -1).transpose(1, 2).split([self.key_dim, self.val_dim], dim=-1)
        q = self.q(x).view(B, -1, self.num_heads, self.key_dim).transpose(1, 2)
        x = levit_attention(q, k, v, attention_biases=self.attention_biases,
                            bias_index=self.attention_bias_idxs, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(B, -1, self.val_attn_dim))


class LevitMlp(nn.Module):
    """Linear_BN(C, hidden) → Hardswish → dropout → Linear_BN(hidden, C)."""

    def __init__(self, dim: int, hidden: int, act_layer=nn.Hardswish, drop: float = 0.0):
        super().__init__()
        self.ln1 = LinearBN(dim, hidden)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.ln2 = LinearBN(hidden, dim, bn_weight_init=0.0)

    def forward(self, x):
        return self.ln2(self.drop(self.act(self.ln1(x))))


class LevitDownsample(nn.Module):
    """Between stages: shrinking attention (no residual), then a residual MLP."""

    def __init__(self, in_dim, out_dim, key_dim, num_heads, resolution, act_layer=nn.Hardswish, drop_path=0.0):
        super().__init__()
        self.attn_downsample = AttentionDownsample(in_dim, out_dim, key_dim, num_heads, attn_ratio=4.0,
                                                   resolution=resolution, act_layer=act_layer)
        self.mlp = LevitMlp(out_dim, 2 * out_dim, act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = self.attn_downsample(x)
        return x + self.drop_path(self.mlp(x))


class LevitBlock(nn.Module):
    """x + attn(x), then x + mlp(x) (no norms: the BatchNorms live inside the Linear_BN layers)."""

    def __init__(self, dim, key_dim, num_heads, attn_ratio, mlp_ratio, resolution, act_layer=nn.Hardswish,
                 drop_path=0.0, attention="regular"):
        super().__init__()
        self.attn = Attention(dim, key_dim, num_heads, attn_ratio, resolution, act_layer, variant=attention)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = LevitMlp(dim, int(dim * mlp_ratio), act_layer)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.attn(x))
        return x + self.drop_path2(self.mlp(x))


class LevitStage(nn.Module):
    """Optional downsample (every stage but the first), then `depth` LevitBlocks."""

    def __init__(self, in_dim, out_dim, key_dim, depth, num_heads, attn_ratio, mlp_ratio, resolution,
                 downsample, act_layer=nn.Hardswish, drop_path=0.0, attention="regular"):
        super().__init__()
        if downsample:
            self.downsample = LevitDownsample(in_dim, out_dim, key_dim, in_dim // key_dim, resolution,
                                              act_layer, drop_path)
            resolution = (resolution - 1) // 2 + 1
        else:
            if in_dim != out_dim:
                raise ValueError(f"a stage without downsample keeps its width, got {in_dim} → {out_dim}")
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            LevitBlock(out_dim, key_dim, num_heads, attn_ratio, mlp_ratio, resolution, act_layer, drop_path,
                       attention) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.downsample(x))


def _per_stage(value, num_stages, name):
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * num_stages
    if len(values) != num_stages:
        raise ValueError(f"{name} needs {num_stages} values (one per stage), got {values}")
    return values


class Levit(nn.Module):
    """LeViT classifier (linear mode, 16× stem); `distilled` adds `head_dist`, output the heads' mean."""

    def __init__(self, img_size=224, in_chans=3, num_classes=1000, embed_dim=(192,), key_dim=64, depth=(12,),
                 num_heads=(3,), attn_ratio=2.0, mlp_ratio=2.0, drop_rate=0.0, drop_path_rate=0.0,
                 attention="regular", distilled=True):
        super().__init__()
        if attention not in LEVIT_VARIANTS:
            raise ValueError(f"unknown attention {attention!r}; expected one of {tuple(LEVIT_VARIANTS)}")
        embed_dim = tuple(embed_dim)
        num_stages = len(embed_dim)
        depth = _per_stage(depth, num_stages, "depth")
        num_heads = _per_stage(num_heads, num_stages, "num_heads")
        attn_ratio = _per_stage(attn_ratio, num_stages, "attn_ratio")
        mlp_ratio = _per_stage(mlp_ratio, num_stages, "mlp_ratio")
        if img_size % 16:
            raise ValueError(f"img_size must be a multiple of the stem's stride 16, got {img_size}")
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = embed_dim[-1]
        self.attention = attention
        self.distilled = distilled
        self.stem = Stem16(in_chans, embed_dim[0])
        resolution = img_size // 16
        stages, in_dim = [], embed_dim[0]
        for i in range(num_stages):
            stages.append(LevitStage(in_dim, embed_dim[i], key_dim, depth[i], num_heads[i], attn_ratio[i],
                                     mlp_ratio[i], resolution, downsample=i > 0, drop_path=drop_path_rate,
                                     attention=attention))
            resolution = (resolution - 1) // 2 + 1 if i > 0 else resolution
            in_dim = embed_dim[i]
        self.stages = nn.Sequential(*stages)
        self.head = BNLinear(self.num_features, num_classes, drop_rate) if num_classes > 0 else nn.Identity()
        if distilled:
            self.head_dist = BNLinear(self.num_features, num_classes, drop_rate) if num_classes > 0 else nn.Identity()

    def forward_features(self, x):
        check_image(x, self.in_chans, self.img_size, type(self).__name__)
        x = self.stem(x).flatten(2).transpose(1, 2)  # (B, N, C) tokens of the 14×14 grid
        return self.stages(x)

    def forward_head(self, x):
        x = x.mean(dim=1)
        if not self.distilled:
            return self.head(x)
        return (self.head(x) + self.head_dist(x)) / 2

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# timm's configurations of the LeViT models (docs/levit.md).
LEVIT_CONFIGS = {
    "levit_128s": dict(embed_dim=(128, 256, 384), key_dim=16, num_heads=(4, 6, 8), depth=(2, 3, 4)),
    "levit_128": dict(embed_dim=(128, 256, 384), key_dim=16, num_heads=(4, 8, 12), depth=(4, 4, 4)),
    "levit_192": dict(embed_dim=(192, 288, 384), key_dim=32, num_heads=(3, 5, 6), depth=(4, 4, 4)),
    "levit_256": dict(embed_dim=(256, 384, 512), key_dim=32, num_heads=(4, 6, 8), depth=(4, 4, 4)),
    "levit_384": dict(embed_dim=(384, 512, 768), key_dim=32, num_heads=(6, 9, 12), depth=(4, 4, 4)),
}
