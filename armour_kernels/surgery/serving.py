"""Serving rewrites: what `optimize` / `export_package` do to a frozen, patched copy of a model
beyond `patch` and `fold_batchnorm` (armour_kernels/deploy.py, armour_kernels/export.py).

All are exact (same outputs) and only pay off for inference with fixed weights, so `patch` does
not do them: `dense_attention_biases` gathers each LeViT bias table into the dense bias it stands
for, `channels_last_stem` lays a token-mode LeViT's stem output out channels-last,
`pack_dense_layers` packs the fused modules' projection weights for the CPU dense op,
`merge_distilled_heads` makes a distilled LeViT's two averaged classifier heads one GEMM.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..nn._packed import PACKED, weight_holder
from ..nn.levit import LevitAttention, LevitAttentionDownsample, folded_projection
from ..nn.patch_embed import patch_projection
from .match import ClassTable

# LeViT's convolution stems: timm's, python_ref's, and the fused one `patch` puts in their place.
_LEVIT_STEMS = ClassTable()
_LEVIT_STEMS.add(("timm.models.levit:Stem16", "timm.models.levit:Stem8", "python_ref.levit:Stem16",
                  "armour_kernels.nn.levit_stem:LevitStem"), True)


class ChannelsLastOutput(nn.Module):
    """`inner(x)` laid out channels-last (a no-op when it already is: the fused stem's oneDNN chain)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).contiguous(memory_format=torch.channels_last)


def channels_last_stem(model: nn.Module) -> bool:
    """Make a token-mode LeViT's stem output channels-last, in place; True when it did.

    LeViT (timm `levit_*`, python_ref) turns its stem's (B, C, H, W) output into tokens with
    `x.flatten(2).transpose(1, 2)`. Traced from a contiguous (NCHW) stem output that is a transposed
    view, and every first-stage residual add keeps its strides, so inductor lowers the first stage's
    Linears on it to plain bmm calls — not prepacked, not fused (5 of LeViT-128S's 48 GEMMs). From
    a channels-last stem output the same view is the contiguous token matrix, and the GEMMs are
    prepacked like the others: LeViT-128S at batch 1, 1 thread, Sapphire Rapids, interleaved:
    1.03x (1.01-1.04) in fp32, 1.09x (1.06-1.11) in bf16. The stem's convolutions
    run channels-last anyway (inductor's layout choice; the fused stem's oneDNN chain), so the
    relayout costs nothing. Conv-mode LeViT (`levit_conv_*`, no tokens) is left alone.
    """
    stem = getattr(model, "stem", None)
    if stem is None or isinstance(stem, ChannelsLastOutput) or getattr(model, "use_conv", False):
        return False
    if not any(_LEVIT_STEMS.get(m) for m in stem.modules()):
        return False
    model.stem = ChannelsLastOutput(stem)
    return True


def dense_attention_biases(model: nn.Module) -> int:
    """Gather each fused LeViT attention's bias table once into the dense bias it stands for, in place.

    The fused LeViT attention passes its (H, R) table and (Nq, Nk) index to the kernel, which
    gathers bias[h, index[i, j]] score by score — and checks the index range — on every call.
    For a frozen model the gathered (H, Nq, Nk) bias is a constant (exact: a gather), so the
    served copy carries that instead: the kernel then adds contiguous bias rows (vector adds,
    broadcast over the batch), no index is read or checked, and under torch.compile with
    freezing it is one more folded constant. Measured on the Sapphire Rapids CI-class machine,
    1 thread, batch 1: the attention kernel calls of LeViT-128S take ~0.85 ms instead of ~1.2 ms
    (standalone), about 3% of the optimized model's call; at batch 64 no change (the kernel
    already gathers once per call there). The tables are at most
    a few MB (LeViT-384: H·N² = 6·196² floats in the first stage). Returns how many were gathered.
    """
    gathered = 0
    for module in model.modules():
        if not isinstance(module, (LevitAttention, LevitAttentionDownsample)):
            continue
        index = getattr(module, "attention_bias_idxs", None)
        if index is None:
            continue
        with torch.no_grad():
            dense = module.attention_biases[:, index].contiguous()
        del module.attention_biases  # the Parameter: a constant buffer takes its place
        module.register_buffer("attention_biases", dense, persistent=False)
        module.attention_bias_idxs = None
        gathered += 1
    return gathered


def cast_keeping_float32_biases(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`model.to(dtype)`, except that each fused LeViT attention's gathered dense bias (see
    `dense_attention_biases`) stays float32.

    The CPU attention kernel adds a float32 bias to its float32 scores as it is, while a bfloat16
    bias is converted score by score: LeViT-128S's first-stage attention at batch 1, bf16, 1 thread,
    Sapphire Rapids: 219 µs with the bf16 bias, 104 µs with the float32 one. The float32 bias is
    also the closer to the model's own values (no bf16 rounding of the table). CPU kernels only:
    the caller applies it where they run."""
    kept = [(module, module.attention_biases) for module in model.modules()
            if isinstance(module, (LevitAttention, LevitAttentionDownsample))
            and getattr(module, "attention_bias_idxs", None) is None
            and isinstance(module.attention_biases, torch.Tensor) and module.attention_biases.dtype == torch.float32]
    model = model.to(dtype)
    for module, bias in kept:
        module.attention_biases = bias  # a registered buffer: assignment replaces it
    return model


# Distilled LeViTs whose inference output is (head(x) + head_dist(x)) / 2 on the same pooled x.
_DISTILLED_LEVITS = ClassTable()
_DISTILLED_LEVITS.add(("timm.models.levit:LevitDistilled", "python_ref.levit:Levit"), True)


class ZeroLogits(nn.Module):
    """head_dist of a model whose heads `merge_distilled_heads` merged: zeros (the sum is in `head`)."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], self.out_features, dtype=x.dtype, device=x.device)


def _head_linear(head: nn.Module):
    """The Linear of a folded classifier head (nn.Linear, or timm's NormLinear / python_ref's BNLinear
    once fold_batchnorm made its BatchNorm an Identity), else None."""
    if isinstance(head, nn.Linear):
        return head
    linear = getattr(head, "linear", None)
    others = [m for name, m in head.named_children() if name != "linear"]
    if isinstance(linear, nn.Linear) and all(isinstance(m, (nn.Identity, nn.Dropout)) for m in others):
        return linear
    return None


def merge_distilled_heads(model: nn.Module) -> bool:
    """A distilled LeViT's two classifier heads as one, in place; True when merged. Call after fold_batchnorm.

    In inference LeViT returns (head(x) + head_dist(x)) / 2, two GEMMs on the same pooled features.
    `head` becomes one Linear with the summed weights and biases (summed in float64, rounded once)
    and `head_dist` returns zeros, so the model computes (W₁ + W₂)·x + b₁ + b₂, halved: the same
    logits, rounded once per GEMM instead of twice, from half the weight bytes — at batch 1 the
    heads stream 2 × 1.5 MB (fp32 LeViT-128S) for one row of output. The training output (two
    separate predictions under `distilled_training`) is gone: a served model only.
    """
    if not _DISTILLED_LEVITS.get(model) or not hasattr(model, "head_dist"):
        return False
    head, dist = _head_linear(model.head), _head_linear(model.head_dist)
    if head is None or dist is None or head.weight.shape != dist.weight.shape or (head.bias is None) != (dist.bias is None):
        return False
    with torch.no_grad():
        head.weight.copy_(head.weight.double() + dist.weight.double())
        if head.bias is not None:
            head.bias.copy_(head.bias.double() + dist.bias.double())
    model.head_dist = ZeroLogits(head.out_features)
    return True


def static_batch_chunks(model: nn.Module, static: bool) -> int:
    """Whether the fused modules of `model` that work in chunks of the batch (the LeViT stem: images;
    the MLPs: rows) may do so in a compiled graph — a static batch — or not: a batch-dynamic graph,
    where the chunk count would fix the batch size. Returns how many modules it set."""
    modules = [m for m in model.modules() if isinstance(getattr(m, "chunk_batches", None), bool)]
    for module in modules:
        module.chunk_batches = static
    return len(modules)


def _fused_block(module, backend):
    from ..nn.block import FusedBlock
    return FusedBlock(module, backend)


def _fused_patch_embed(module, backend):
    from ..nn.patch_embed import FusedPatchEmbed
    return FusedPatchEmbed(module, backend)


# The modules a served model runs fused beyond what `patch` does: DeiT / ViT blocks (LayerNorms and
# residual adds inside the projections, nn/block.py) and patch embeddings (one dense GEMM over the
# flattened patches, nn/patch_embed.py).
_SERVING_FUSIONS = ClassTable()
_SERVING_FUSIONS.add(("timm.models.vision_transformer:Block", "python_ref.deit:Block"), _fused_block)
_SERVING_FUSIONS.add(("timm.layers.patch_embed:PatchEmbed", "python_ref.deit:PatchEmbed"), _fused_patch_embed)


def fuse_for_serving(model: nn.Module, backend: str = "auto") -> int:
    """Replace, in place, each module of `_SERVING_FUSIONS` whose fused form can run it (`fusable()`,
    checked in eval mode: a served model's): the pre-norm blocks whose attention and MLP `patch`
    fused, and the patch embeddings. Others (layer scale, a norm after the patch projection, ...)
    are left. Returns how many it replaced."""
    fused = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            build = _SERVING_FUSIONS.get(child)
            if build is None:
                continue
            module = build(child, backend)
            if module.train(False).fusable():
                setattr(parent, name, module.train(child.training))
                fused += 1
    return fused


def pack_dense_layers(model: nn.Module) -> int:
    """Pack the projection weights of every fused module for the CPU dense op, in place; how many.

    Each fused module lists the projections it hands to linear_act (`dense_layers()`); each weight
    (folded LeViT projections included) is packed once by `armour_kernels.ops.dense_pack` into
    the layout of this CPU's micro-kernels — oneDNN's fp32 brgemm blocks, bf16 VNNI blocks on
    AMX, or left as it is where neither applies — and attached to the module holding it as the
    non-persistent buffer `armour_packed` (nn/_packed.py). From then on the module's inference
    calls run `armour_kernels::dense` (GEMM + bias + activation + residual per tile, docs/dense.md),
    eagerly and under torch.compile / torch.export alike. Call it after the final dtype cast:
    the layout depends on the dtype. CPU weights only; a projection that is not folded (a
    BatchNorm left, a conv that is not 1×1) is left alone.
    """
    from ..ops.linear_act import dense_pack

    packed = 0
    for module in model.modules():
        layers = getattr(module, "dense_layers", None)
        if not callable(layers):
            continue
        for layer in layers():
            folded = folded_projection(layer) or patch_projection(layer)
            if folded is None or folded[0].device.type != "cpu" or not folded[0].is_floating_point():
                continue
            holder = weight_holder(layer)
            with torch.no_grad():
                holder.register_buffer(PACKED, dense_pack(folded[0]), persistent=False)
            packed += 1
    return packed


__all__ = ["ChannelsLastOutput", "channels_last_stem", "dense_attention_biases", "cast_keeping_float32_biases",
           "pack_dense_layers", "merge_distilled_heads", "ZeroLogits", "static_batch_chunks", "fuse_for_serving"]
