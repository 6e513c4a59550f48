"""Small building blocks shared by the python_ref models (stochastic depth, input checks)."""
from __future__ import annotations

import torch
import torch.nn as nn


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training (timm's DropPath)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Linearly increasing stochastic-depth rates over the blocks, as timm spaces them."""
    if depth <= 1:
        return [0.0] * depth
    return [drop_path_rate * i / (depth - 1) for i in range(depth)]


def check_image(x: torch.Tensor, in_chans: int, img_size: int, model: str) -> None:
    """Raise a clear error unless x is a (B, in_chans, img_size, img_size) batch of images."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != in_chans or tuple(x.shape[2:]) != (img_size, img_size):
        raise ValueError(f"{model} expects input of shape (B, {in_chans}, {img_size}, {img_size}), "
                         f"got {tuple(x.shape)}")
