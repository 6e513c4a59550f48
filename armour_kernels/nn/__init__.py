"""The fused modules, by name: drop-ins for timm / python_ref / lucidrains modules and Armour layers.

    FusedDeiTAttention, ArmourAttention      DeiT / ViT attention, every variant (docs/attention.md)
    LevitAttention, LevitAttentionDownsample, LevitMlp, LevitBlock, LevitDownsampleBlock, LevitStem
                                             LeViT (docs/levit.md)
    NystromAttention                         drop-in for nystrom_attention.NystromAttention 0.0.14
    PerformerAttention, RandomFeatures       drop-in for performer_pytorch.SelfAttention 1.1.4
    FusedViXAttention                        Vision Xformers softmax attention (vit-pytorch layout)
    FusedMlp                                 timm / DeiT MLP on the Linear + activation ops
    FusedBlock                               a served DeiT / ViT block: norms and residual adds inside
                                             the projections (docs/dense.md)
    FusedPatchEmbed                          a served patch embedding: one dense GEMM over the patches
    adopt, Adopted                           how a fused module takes over the module it replaces
    mask_bias                                attn_mask / is_causal as the attention op's dense bias
    FX_LEAF_MODULES                          the classes torch.fx keeps whole (leaves); registered with
                                             timm's notrace registry at import when timm is installed
"""
from ._fx import LEAF_MODULES as FX_LEAF_MODULES
from ._fx import register_leaves
from .adopt import Adopted, adopt
from .attention import ArmourAttention, FusedDeiTAttention
from .block import FusedBlock
from .patch_embed import FusedPatchEmbed
from .levit import LevitAttention, LevitAttentionDownsample, LevitBlock, LevitDownsampleBlock, LevitMlp
from .levit_stem import LevitStem
from .linear_act import FusedMlp
from .masks import mask_bias
from .nystrom import NystromAttention
from .performer import PerformerAttention, RandomFeatures
from .vix import FusedViXAttention

# The modules patch puts into timm DeiT / ViT / LeViT: torch.fx leaves, so a traced graph calls them
# (and their kernels) instead of tracing into them.
register_leaves(FusedDeiTAttention, ArmourAttention, FusedMlp, LevitAttention, LevitAttentionDownsample, LevitMlp,
                LevitBlock, LevitDownsampleBlock, LevitStem, FusedBlock,
                FusedPatchEmbed)

__all__ = ["FusedDeiTAttention", "ArmourAttention", "LevitAttention", "LevitAttentionDownsample", "LevitMlp",
           "LevitBlock", "LevitDownsampleBlock", "LevitStem", "NystromAttention", "PerformerAttention",
           "RandomFeatures", "FusedViXAttention", "FusedMlp", "FusedBlock", "FusedPatchEmbed", "adopt", "Adopted", "mask_bias", "FX_LEAF_MODULES"]
