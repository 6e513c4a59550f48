"""armour_kernels: fused attention kernels for vision transformers (Armour, LeViT, Nyström, Performer).

The public API lives here and nowhere else. See README.md for the map of the package.
"""
from ._backend import BACKENDS
from .ops.nystrom import nystrom_attention
from .ops.performer import performer_attention

__version__ = "0.1.0"

__all__ = ["BACKENDS", "__version__"]
__all__ += ["nystrom_attention", "performer_attention"]
