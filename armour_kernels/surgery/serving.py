"""Serving rewrites: what `optimize` / `export_package` do to a frozen, patched copy of a model
beyond `patch` and `fold_batchnorm` (armour_kernels/deploy.py, armour_kernels/export.py).

Both are exact (same outputs) and only pay off for inference with fixed weights, so `patch` does
not do them: `dense_attention_biases` gathers each LeViT bias table into the dense bias it stands
for, `channels_last_stem` lays a token-mode LeViT's stem output out channels-last.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..nn.levit import LevitAttention, LevitAttentionDownsample
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


__all__ = ["ChannelsLastOutput", "channels_last_stem", "dense_attention_biases"]
