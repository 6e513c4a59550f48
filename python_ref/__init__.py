"""Pure-PyTorch reference functions and models for armour_kernels.

Readable definitions, no Triton, no C++: every fused kernel is checked against these.
"""
from .attention import (DEIT_VARIANTS, VALUE_SOURCES, attention, attention_lse, attention_scores,
                        deit_attention, levit_attention, levit_bias, levit_bias_index, value_tensor)
from .linformer import linformer_attention
from .nystrom import nystrom_attention, razavi_pinv
from .performer import (default_num_features, gaussian_orthogonal_random_matrix, performer_attention,
                        relu_features, softmax_features)
from .rope import apply_rope, rope_angles
from .deit import DeiT
from .fold import fold_batchnorm
from .levit import Levit
from .registry import create_model, list_models
from .vix import MLPMixer, VisionXformer, summary_param_count, vix_cifar
