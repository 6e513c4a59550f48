"""armour_kernels: fused attention kernels for vision transformers (Armour, LeViT, Nyström, Performer).

The public API lives here and nowhere else. See README.md for the map of the package.
"""
from ._backend import BACKENDS
from .convert import armourize
from .deploy import export_package, load_package, optimize
from .fold import fold_batchnorm
from .ops.attention import armour_attention, attention
from .ops.linear_act import linear_hardswish
from .ops.nystrom import nystrom_attention
from .ops.performer import performer_attention
from .surgery import patch, unpatch

__version__ = "0.1.0"

__all__ = ["BACKENDS", "__version__", "attention", "armour_attention", "armourize", "fold_batchnorm", "patch", "unpatch"]
__all__ += ["nystrom_attention", "performer_attention"]
__all__ += ["linear_hardswish"]
__all__ += ["optimize", "export_package", "load_package"]
