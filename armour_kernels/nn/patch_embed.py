"""A ViT / DeiT patch embedding served as one dense-op call on the flattened patches.

The patch embedding is a convolution whose kernel equals its stride (16×16 / 16 in DeiT): each
output token is one GEMM row, the (C, 16, 16) patch flattened against the weight flattened the
same way. `FusedPatchEmbed` replaces timm's `PatchEmbed` and python_ref's DeiT `PatchEmbed` in a
served model (armour_kernels.optimize / export_package: surgery/serving.py `fuse_for_serving`);
it adopts the original's submodules (same Parameters and state-dict keys). Its forward cuts the
image into patch rows (`patch_rows`: one copy) and runs `linear_act` on them — the dense op on
the weight `pack_dense_layers` packed. On Sapphire Rapids
DeiT-Ti at batch 1 that replaced oneDNN's convolution and inductor's layout copy in front of it
(docs/dense.md has the numbers). Tokens come out (B, N, C), as the original's `flatten` gives them.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..ops.linear_act import linear_act, patch_rows
from ._fx import eager_forward
from ._packed import packed_of
from .adopt import Adopted


def patch_projection(module: nn.Module) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
    """(weight (out, C·kh·kw), bias) of a patchify Conv2d (kernel = stride, no padding, dilation or
    groups), the GEMM over flattened patches; else None."""
    if not isinstance(module, nn.Conv2d) or module.kernel_size != module.stride or module.groups != 1:
        return None
    if module.padding not in ((0, 0), "valid") or module.dilation != (1, 1):
        return None
    return module.weight.flatten(1), module.bias


class FusedPatchEmbed(Adopted):
    """proj (a patchify Conv2d) → flatten to tokens (B, N, C), with the original's input-size checks."""

    def __init__(self, original: nn.Module, backend: str = "auto"):
        super().__init__(original, backend)
        # The original's settings (img_size, patch_size, num_patches, flatten, ...): its model reads them.
        for name, value in vars(original).items():
            if not name.startswith("_") and name != "training":
                setattr(self, name, value)

    @torch.jit.unused
    def fusable(self) -> bool:
        """Whether the patch embedding is a patchify conv with nothing after it but the NLC flatten."""
        return (patch_projection(self.proj) is not None and getattr(self, "flatten", True) is True
                and isinstance(getattr(self, "norm", None), (nn.Identity, type(None)))
                and not getattr(self, "dynamic_img_pad", False))

    @torch.jit.unused
    def dense_layers(self) -> list:
        """The projection whose weight a served model packs for the dense op."""
        return [self.proj]

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # the fusable original's computation, as ATen ops
            return self.proj(x).flatten(2).transpose(1, 2)
        return self._eager_forward(x)

    @eager_forward
    def _eager_forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.proj.in_channels:
            raise ValueError(f"FusedPatchEmbed: expected images (B, {self.proj.in_channels}, H, W), got {tuple(x.shape)}")
        self._check_size(x.shape[2], x.shape[3])
        weight, bias = patch_projection(self.proj)
        return linear_act(patch_rows(x, self.proj.kernel_size), weight, bias, backend=self.backend,
                          packed=packed_of(self.proj))

    def _check_size(self, H: int, W: int) -> None:
        """timm PatchEmbed's checks (python_ref's has no img_size tuple and checks nothing)."""
        size = getattr(self, "img_size", None)
        if not isinstance(size, tuple):
            return
        if getattr(self, "strict_img_size", False):
            if (H, W) != size:
                raise AssertionError(f"Input size ({H}, {W}) doesn't match model {size}.")
        elif H % self.proj.kernel_size[0] or W % self.proj.kernel_size[1]:
            raise AssertionError(f"Input size ({H}, {W}) should be divisible by patch size {self.proj.kernel_size}.")


__all__ = ["FusedPatchEmbed", "patch_projection"]
