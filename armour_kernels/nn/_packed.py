"""Where a served model keeps the packed weights of its dense layers.

`armour_kernels.optimize` / `export_package` pack each fused module's projection weights once for
the CPU dense op (surgery/serving.py: `pack_dense_layers`) and attach the result to the Linear (or
1×1 Conv2d) holding the weight, as a non-persistent buffer named PACKED: state dicts are
unchanged, and under torch.compile with freezing it is one more constant. The fused modules hand
`packed_of(projection)` to linear_act, which runs the dense op on it (docs/dense.md).
"""
from __future__ import annotations

from typing import Optional

import torch.nn as nn
from torch import Tensor

PACKED = "armour_packed"


def weight_holder(module: nn.Module) -> nn.Module:
    """The Linear / Conv2d holding a projection's weight: LeViT's Linear_BN / Conv2d_BN keep it in `.linear`."""
    linear = getattr(module, "linear", None)
    return linear if isinstance(linear, nn.Module) else module


def packed_of(module: nn.Module) -> Optional[Tensor]:
    """The packed weight a served model attached to `module`'s projection, or None."""
    return getattr(weight_holder(module), PACKED, None)


__all__ = ["PACKED", "packed_of", "weight_holder"]
