"""Vision Xformers on CIFAR-10 (docs/models.md): ViT / ViP / ViL / ViN, FNet and MLP-Mixer, plain or hybrid.

The paper's code adapts lucidrains `vit-pytorch`; the attention layers mirror the packages it
used (module and attribute names included), with the maths taken from python_ref:

    softmax    `Attention` (vit-pytorch): to_qkv (no bias) → softmax(q kᵀ/√d) v → to_out
    performer  `PerformerSelfAttention` (performer-pytorch `SelfAttention`): to_q/to_k/to_v with
               bias, FAVOR+ with a fixed (m, d) `fast_attention.projection_matrix` buffer
    linformer  `LinformerSelfAttention` (lucidrains `linformer`): one kv head, shared key/value
               sequence projection `proj_k` (seq_len, k)
    nystrom    `NystromAttention` (lucidrains `nystrom-attention` 0.0.14): m landmarks, 6 pinv
               iterations, depthwise residual conv on v
    fnet       `FNetBlock`: Re(FFT over features, then tokens), no parameters
    mixer      `MLPMixer` (lucidrains `mlp-mixer-pytorch`): token mixing Conv1d(n, n, 1) ×2

`hybrid=True` replaces the linear patch embedding by three 3×3 convs (3→32→64→dim);
`rope=True` replaces the learnable position embedding by rotary embeddings of q and k (not v);
`armour=True` (softmax, performer, nystrom) drops the value projection: the value is the
unrotated query (docs/models.md);
`mode` ("clean" | "seed") picks the batch-invariant or the paper-code form of the Nyström
pseudo-inverse scaling and of the Performer key stabiliser (docs/nystrom.md, docs/performer.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .attention import attention_scores
from .linformer import linformer_attention
from .nystrom import MODES, nystrom_attention
from .performer import default_num_features, gaussian_orthogonal_random_matrix, performer_attention
from .rope import apply_rope, rope_angles
from .layers import check_image

VIX_ATTENTIONS = ("softmax", "performer", "linformer", "nystrom", "fnet", "mixer")
# Token mixers with a query and a key for RoPE to rotate.
ROPE_ATTENTIONS = ("softmax", "performer", "linformer", "nystrom")
# Attentions with a separate value projection that Armour removes.
ARMOUR_ATTENTIONS = ("softmax", "performer", "nystrom")


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H·D) → (B, H, N, D)."""
    B, N, _ = x.shape
    return x.view(B, N, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) → (B, N, H·D)."""
    B, H, N, D = x.shape
    return x.transpose(1, 2).reshape(B, N, H * D)


def packed_qkv(qkv: torch.Tensor, heads: int, armour: bool):
    """Split a packed [q | k | v] (or Armour's [q | k], value = q) projection into (B, H, N, D) heads."""
    parts = [split_heads(t, heads) for t in qkv.chunk(2 if armour else 3, dim=-1)]
    return (parts[0], parts[1], parts[0]) if armour else tuple(parts)


def rotate(x: torch.Tensor, rope: bool) -> torch.Tensor:
    """RoPE over the token positions 0..N-1 of (B, H, N, D), or x unchanged."""
    if not rope:
        return x
    angles = rope_angles(x.shape[-2], x.shape[-1], device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
    return apply_rope(x, angles)


class Attention(nn.Module):
    """ViT softmax attention (vit-pytorch): to_qkv laid out [q | k | v] (Armour: [q | k]), each heads · dim_head."""

    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0, rope=False, armour=False):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.rope = rope
        self.armour = armour
        self.to_qkv = nn.Linear(dim, inner * (2 if armour else 3), bias=False)
        self.dropout = nn.Dropout(dropout)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x):
        q, k, v = packed_qkv(self.to_qkv(x), self.heads, self.armour)
        q, k = rotate(q, self.rope), rotate(k, self.rope)
        probs = self.dropout(attention_scores(q, k, scale=self.scale).softmax(dim=-1))
        return self.to_out(merge_heads(probs @ v))


class NystromAttention(nn.Module):
    """Nyström attention layer as lucidrains `nystrom-attention` 0.0.14 (docs/nystrom.md)."""

    def __init__(self, dim, dim_head=64, heads=8, num_landmarks=256, pinv_iterations=6, residual=True,
                 residual_conv_kernel=33, eps=1e-8, dropout=0.0, rope=False, mode="clean", armour=False):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        inner = heads * dim_head
        self.eps = eps  # kept for parity with the original; it only guards masked landmarks there
        self.heads = heads
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.scale = dim_head ** -0.5
        self.rope = rope
        self.mode = mode
        self.armour = armour
        self.to_qkv = nn.Linear(dim, inner * (2 if armour else 3), bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.residual = residual
        if residual:
            self.res_conv = nn.Conv2d(heads, heads, (residual_conv_kernel, 1),
                                      padding=(residual_conv_kernel // 2, 0), groups=heads, bias=False)

    def forward(self, x):
        q, k, v = packed_qkv(self.to_qkv(x), self.heads, self.armour)
        q, k = rotate(q, self.rope), rotate(k, self.rope)
        out = nystrom_attention(q, k, v, num_landmarks=self.num_landmarks, pinv_iterations=self.pinv_iterations,
                                mode=self.mode, conv_weight=self.res_conv.weight if self.residual else None)
        return self.to_out(merge_heads(out))


class FastAttention(nn.Module):
    """FAVOR+ core (performer-pytorch `FastAttention`): holds the fixed random-feature matrix."""

    def __init__(self, dim_heads, nb_features=None, generalized_attention=False, mode="clean"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.dim_heads = dim_heads
        self.nb_features = nb_features or default_num_features(dim_heads)
        self.generalized_attention = generalized_attention
        self.mode = mode
        self.register_buffer("projection_matrix", gaussian_orthogonal_random_matrix(self.nb_features, dim_heads))

    def forward(self, q, k, v):
        kernel = "relu" if self.generalized_attention else "softmax"
        return performer_attention(q, k, v, projection=self.projection_matrix, kernel=kernel, mode=self.mode)


class PerformerSelfAttention(nn.Module):
    """Performer attention layer as performer-pytorch `SelfAttention` (no local heads, no redraw)."""

    def __init__(self, dim, heads=8, dim_head=64, nb_features=None, generalized_attention=False, dropout=0.0,
                 qkv_bias=True, attn_out_bias=True, rope=False, mode="clean", armour=False):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.rope = rope
        self.armour = armour
        self.fast_attention = FastAttention(dim_head, nb_features, generalized_attention, mode)
        self.to_q = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_v = None if armour else nn.Linear(dim, inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, dim, bias=attn_out_bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        q, k = split_heads(self.to_q(x), self.heads), split_heads(self.to_k(x), self.heads)
        v = q if self.armour else split_heads(self.to_v(x), self.heads)
        q, k = rotate(q, self.rope), rotate(k, self.rope)
        return self.dropout(self.to_out(merge_heads(self.fast_attention(q, k, v))))


class LinformerSelfAttention(nn.Module):
    """Linformer attention layer as lucidrains `linformer` `LinformerSelfAttention`."""

    def __init__(self, dim, seq_len, k=256, heads=8, dim_head=None, one_kv_head=False, share_kv=False,
                 dropout=0.0, rope=False):
        super().__init__()
        dim_head = dim_head or dim // heads
        self.seq_len = seq_len
        self.k = k
        self.heads = heads
        self.dim_head = dim_head
        self.one_kv_head = one_kv_head
        self.share_kv = share_kv
        self.rope = rope
        kv_dim = dim_head if one_kv_head else dim_head * heads
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_k = nn.Linear(dim, kv_dim, bias=False)
        self.proj_k = nn.Parameter(torch.empty(seq_len, k).uniform_(-k ** -0.5, k ** -0.5))
        if not share_kv:
            self.to_v = nn.Linear(dim, kv_dim, bias=False)
            self.proj_v = nn.Parameter(torch.empty(seq_len, k).uniform_(-k ** -0.5, k ** -0.5))
        self.dropout = nn.Dropout(dropout)
        self.to_out = nn.Linear(dim_head * heads, dim)

    def forward(self, x):
        if x.shape[1] != self.seq_len:
            raise ValueError(f"LinformerSelfAttention was built for {self.seq_len} tokens, got {x.shape[1]}")
        kv_heads = 1 if self.one_kv_head else self.heads
        q = rotate(split_heads(self.to_q(x), self.heads), self.rope)
        k = rotate(split_heads(self.to_k(x), kv_heads), self.rope)
        v = None if self.share_kv else split_heads(self.to_v(x), kv_heads)
        out = linformer_attention(q, k, v, proj_k=self.proj_k, proj_v=None if self.share_kv else self.proj_v)
        return self.to_out(merge_heads(out))


class FNetBlock(nn.Module):
    """Token mixing by the real part of a 2-D Fourier transform (features, then tokens)."""

    def forward(self, x):
        return torch.fft.fft(torch.fft.fft(x, dim=-1), dim=-2).real


class PreNorm(nn.Module):
    """fn(LayerNorm(x)); the residual add is in the Transformer loop (vit-pytorch)."""

    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    """Linear → GELU → dropout → Linear → dropout (`dense` may be a 1×1 Conv1d for token mixing)."""

    def __init__(self, dim, hidden_dim, dropout=0.0, dense=nn.Linear):
        super().__init__()
        self.net = nn.Sequential(dense(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 dense(hidden_dim, dim), nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class Transformer(nn.Module):
    """`depth` pre-norm residual layers of [token mixer, feed-forward]."""

    def __init__(self, dim, depth, make_mixer, mlp_dim, dropout=0.0):
        super().__init__()
        self.layers = nn.ModuleList([
            nn.ModuleList([PreNorm(dim, make_mixer()), PreNorm(dim, FeedForward(dim, mlp_dim, dropout))])
            for _ in range(depth)])

    def forward(self, x):
        for mix, ff in self.layers:
            x = x + mix(x)
            x = x + ff(x)
        return x


class Patchify(nn.Module):
    """(B, C, H, W) → (B, (H/p)(W/p), p·p·C) patches, pixel order (p1, p2, c) like vit-pytorch's Rearrange."""

    def __init__(self, patch_size):
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x):
        B, C, H, W = x.shape
        p = self.patch_size
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, (H // p) * (W // p), p * p * C)


class ConvTokens(nn.Module):
    """Hybrid embedding: three 3×3 stride-1 convs (in → 32 → 64 → dim, bias, no activation), one token per pixel."""

    def __init__(self, in_chans, dim, widths=(32, 64)):
        super().__init__()
        chans = (in_chans,) + tuple(widths) + (dim,)
        self.convs = nn.Sequential(*[nn.Conv2d(chans[i], chans[i + 1], 3, stride=1, padding=1)
                                     for i in range(len(chans) - 1)])

    def forward(self, x):
        return self.convs(x).flatten(2).transpose(1, 2)


def patch_embedding(in_chans, patch_size, dim, hybrid):
    """The token embedding: linear on flattened patches, or the hybrid convs (patch size 1 only)."""
    if hybrid:
        if patch_size != 1:
            raise ValueError(f"the hybrid (convolutional) embedding makes one token per pixel: patch_size must be 1, "
                             f"got {patch_size}")
        return ConvTokens(in_chans, dim)
    return nn.Sequential(Patchify(patch_size), nn.Linear(in_chans * patch_size * patch_size, dim))


class VisionXformer(nn.Module):
    """ViT / ViP / ViL / ViN / FNet on CIFAR-10: class token, position embedding (or RoPE), pre-norm layers."""

    def __init__(self, img_size=32, patch_size=1, in_chans=3, num_classes=10, embed_dim=128, depth=4, num_heads=4,
                 head_dim=32, mlp_dim=256, drop_rate=0.0, emb_drop_rate=0.0, attention="softmax", hybrid=False,
                 rope=False, armour=False, num_landmarks=64, nb_features=None, linformer_k=64, mode="clean"):
        super().__init__()
        if attention not in VIX_ATTENTIONS or attention == "mixer":
            raise ValueError(f"unknown attention {attention!r}; expected one of {VIX_ATTENTIONS[:-1]} "
                             "(use MLPMixer for 'mixer')")
        if rope and attention not in ROPE_ATTENTIONS:
            raise ValueError(f"rope rotates queries and keys; attention {attention!r} has none "
                             f"(rope works with {ROPE_ATTENTIONS})")
        if armour and attention not in ARMOUR_ATTENTIONS:
            raise ValueError(f"armour makes the query the value; attention {attention!r} does not support it "
                             f"(armour works with {ARMOUR_ATTENTIONS})")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.img_size = img_size
        self.in_chans = in_chans
        self.attention = attention
        self.hybrid = hybrid
        self.rope = rope
        self.armour = armour
        num_tokens = (img_size // patch_size) ** 2 + 1
        self.to_patch_embedding = patch_embedding(in_chans, patch_size, embed_dim, hybrid)
        self.pos_embedding = None if rope else nn.Parameter(torch.randn(1, num_tokens, embed_dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.dropout = nn.Dropout(emb_drop_rate)

        def make_mixer():
            if attention == "softmax":
                return Attention(embed_dim, num_heads, head_dim, drop_rate, rope, armour)
            if attention == "nystrom":
                return NystromAttention(embed_dim, head_dim, num_heads, num_landmarks, dropout=drop_rate, rope=rope,
                                        mode=mode, armour=armour)
            if attention == "performer":
                return PerformerSelfAttention(embed_dim, num_heads, head_dim, nb_features, dropout=drop_rate,
                                              rope=rope, mode=mode, armour=armour)
            if attention == "linformer":
                return LinformerSelfAttention(embed_dim, num_tokens, linformer_k, num_heads, head_dim,
                                              one_kv_head=True, share_kv=True, dropout=drop_rate, rope=rope)
            return FNetBlock()

        self.transformer = Transformer(embed_dim, depth, make_mixer, mlp_dim, drop_rate)
        self.mlp_head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes))

    def forward(self, x):
        check_image(x, self.in_chans, self.img_size, type(self).__name__)
        x = self.to_patch_embedding(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embedding is not None:
            x = x + self.pos_embedding
        x = self.transformer(self.dropout(x))
        return self.mlp_head(x[:, 0])


class PreNormResidual(nn.Module):
    """x + fn(LayerNorm(x)) (mlp-mixer-pytorch)."""

    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return x + self.fn(self.norm(x))


class MLPMixer(nn.Module):
    """MLP-Mixer (lucidrains `mlp-mixer-pytorch`): no class token, no position embedding, mean pooling.

    Token mixing is a FeedForward over the token axis built from 1×1 Conv1d(n, n) (expansion 1),
    channel mixing a FeedForward over features (dim → dim · expansion_factor_token → dim).
    """

    def __init__(self, img_size=32, patch_size=1, in_chans=3, num_classes=10, embed_dim=128, depth=4,
                 expansion_factor=1.0, expansion_factor_token=1.0, drop_rate=0.0, hybrid=False):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.img_size = img_size
        self.in_chans = in_chans
        self.attention = "mixer"
        self.hybrid = hybrid
        num_patches = (img_size // patch_size) ** 2
        conv1x1 = lambda i, o: nn.Conv1d(i, o, kernel_size=1)  # noqa: E731 - mixes tokens (channels of Conv1d)
        self.to_patch_embedding = patch_embedding(in_chans, patch_size, embed_dim, hybrid)
        self.layers = nn.Sequential(*[nn.Sequential(
            PreNormResidual(embed_dim, FeedForward(num_patches, int(num_patches * expansion_factor), drop_rate,
                                                   dense=conv1x1)),
            PreNormResidual(embed_dim, FeedForward(embed_dim, int(embed_dim * expansion_factor_token), drop_rate)),
        ) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        check_image(x, self.in_chans, self.img_size, type(self).__name__)
        x = self.norm(self.layers(self.to_patch_embedding(x)))
        return self.head(x.mean(dim=1))


def vix_cifar(attention="softmax", hybrid=False, rope=False, armour=False, **kwargs):
    """The paper's CIFAR-10 model for one token mixer (dim 128, depth 4, 4 heads × 32, MLP 256)."""
    if attention not in VIX_ATTENTIONS:
        raise ValueError(f"unknown attention {attention!r}; expected one of {VIX_ATTENTIONS}")
    if attention == "mixer":
        if rope or armour:
            raise ValueError(f"{'rope' if rope else 'armour'} needs queries and keys; the MLP-Mixer has none")
        return MLPMixer(hybrid=hybrid, **kwargs)
    return VisionXformer(attention=attention, hybrid=hybrid, rope=rope, armour=armour, **kwargs)


def summary_param_count(model: nn.Module) -> int:
    """torchsummary's count, the paper's: `weight` and `bias` of every submodule (not the root).

    Leaves out the model's own parameters (position embedding, class token) and any parameter
    not called weight or bias (Linformer's sequence projections).
    """
    total = 0
    for module in model.modules():
        if module is model:
            continue
        for name in ("weight", "bias"):
            p = getattr(module, name, None)
            if isinstance(p, torch.Tensor):
                total += p.numel()
    return total
