"""Fused LeViT blocks: attention (regular / armour / armour_plus), subsample attention, MLP.

Each module takes over the submodules, Parameters and buffers of the block it replaces (same
names, same state-dict keys, the same Parameter objects), so a checkpoint loads into either and
training after `armour_kernels.patch` shows up in the original after `unpatch`. They accept
timm `levit_*` (token layout (B, N, C)), timm `levit_conv_*` (1×1 convs on (B, C, H, W)) and
python_ref LeViT blocks, BatchNorm folded or not:

- The attention core is ONE call of `armour_kernels.attention`: q, k and v (or Armour's value
  concat(q, v_half) / concat(q, k)) are strided views of the packed projection output — no
  split, permute or concat copies — and the (H, R) bias table is gathered in-kernel through
  `attention_bias_idxs`, so its gradient lands in `attention_biases`.
- Folded, in eval mode, every projection is one `armour_kernels.ops.linear_act` call: `proj`
  (Hardswish → Linear, + the block's residual) and the MLP (Linear + Hardswish, then Linear +
  residual) each one fused GEMM (docs/linear_act.md).
- Unfolded or training: the projections run their own modules (BatchNorm in batch-statistics
  mode cannot be folded), the attention runs through the autograd op.
- Under `torch.jit.script`: the projections and blocks run their own modules (ATen), the attention
  the same op through the dispatcher (nn/_scripted.py). Under torch.fx each module is a leaf
  (nn/_fx.py).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..constants import LEVIT_VALUES
from ..ops.attention import attention
from ..ops.linear_act import linear_act, mlp
from ._fx import eager_forward
from ._packed import packed_of
from ._scripted import attention_op
from .adopt import Adopted


# ----------------------------------------------------------------------------- projections

def folded_projection(module: nn.Module):
    """(weight (out, in), bias) of a projection with no BatchNorm left, else None.

    Accepts nn.Linear, a 1×1 stride-1 nn.Conv2d, and Linear_BN / Conv2d_BN pairs (`.linear`,
    `.bn`) whose BatchNorm was folded away (`.bn` is nn.Identity, see armour_kernels.fold).
    """
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if isinstance(module, nn.Conv2d):
        if module.kernel_size == (1, 1) and module.stride == (1, 1) and module.groups == 1 \
                and module.padding in ((0, 0), "valid"):
            return module.weight.flatten(1), module.bias
        return None
    linear, bn = getattr(module, "linear", None), getattr(module, "bn", None)
    if linear is not None and isinstance(bn, nn.Identity):
        return folded_projection(linear)
    return None


# ----------------------------------------------------------------------------- layouts
# Linear mode keeps tokens as (B, N, C); conv mode as (B, C, H, W). Inside the fused blocks
# everything is tokens; these two move between the forms without copying.

def _per_head(t: Tensor, heads: int, conv: bool) -> Tensor:
    """Projection output → (B, N, heads, width per head), a view."""
    if conv:
        return t.flatten(2).unflatten(1, (heads, -1)).permute(0, 3, 1, 2)
    return t.unflatten(-1, (heads, -1))


def _tokens_to_layout(t: Tensor, conv: bool, grid: Optional[List[int]]) -> Tensor:
    """(B, N, C) tokens → the block's own layout ((B, C, H, W) channels-last view in conv mode)."""
    if conv and grid is not None:
        return t.unflatten(1, grid).permute(0, 3, 1, 2)
    return t


def _layout_to_tokens(t: Tensor, conv: bool) -> Tensor:
    """The block's own layout → (B, N, C) tokens, a view (the inverse of `_tokens_to_layout`)."""
    return t.flatten(2).transpose(1, 2) if conv else t


def _grid(x: Tensor, conv: bool) -> Optional[List[int]]:
    """The (H, W) grid of a conv-mode activation (B, C, H, W); None in linear mode."""
    return x.shape[2:] if conv else None


def _is_hardswish(module) -> bool:
    return isinstance(module, nn.Hardswish)


class _LevitAttentionBase(Adopted):
    """What both attention blocks share: adopting the original, the attention op call, the fused output projection."""

    def __init__(self, original: nn.Module, backend: str = "auto"):
        super().__init__(original, backend)
        self.num_heads = original.num_heads
        self.key_dim = original.key_dim
        self.scale = original.scale
        self.use_conv = bool(getattr(original, "use_conv", False))

    def _attend(self, q, k, v, value):
        return attention(q, k, v, value=value, scale=self.scale, bias=self.attention_biases,
                         bias_index=self.attention_bias_idxs, backend=self.backend)

    @torch.jit.unused
    def dense_layers(self) -> List[nn.Module]:
        """The projections whose folded weights this block hands to linear_act (what a served model packs)."""
        inputs = [self.qkv] if hasattr(self, "qkv") else [self.kv, list(self.q.children())[-1]]
        return inputs + [self.proj.ln] if hasattr(self.proj, "ln") else inputs

    def _scripted_attend(self, q: Tensor, k: Tensor, v: Optional[Tensor], value: str) -> Tensor:
        return attention_op(q, k, v, self.attention_biases, self.attention_bias_idxs, value, self.scale, False,
                            self.backend)

    def _project_heads(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A packed projection of x → (B, N, heads, width per head).

        Folded, eval: one `linear_act` GEMM on the tokens (in conv mode the 1×1 conv runs token-major,
        so each head's features are contiguous for the attention kernel; the conv's own output would
        put them N apart).
        """
        folded = None if self.training else folded_projection(module)
        if folded is not None:
            tokens = _layout_to_tokens(x, self.use_conv)
            return linear_act(tokens, *folded, backend=self.backend,
                              packed=packed_of(module)).unflatten(-1, (self.num_heads, -1))
        return _per_head(module(x), self.num_heads, self.use_conv)

    def _project_out(self, o: torch.Tensor, grid, residual=None) -> torch.Tensor:
        """o (B, N, H, Dv) from the op → Hardswish → proj [+ residual], back in the block's layout.

        Folded, eval: one GEMM that activates its input and adds the residual (the block input)."""
        folded = folded_projection(self.proj.ln) if hasattr(self.proj, "ln") else None
        if folded is not None and not self.training and _is_hardswish(self.proj.act):
            weight, bias = folded  # o is the op's fresh output: the input Hardswish may run in place
            res = None if residual is None else _layout_to_tokens(residual, self.use_conv)
            y = linear_act(o.flatten(2), weight, bias, act_in=True, residual=res, backend=self.backend,
                           inplace_input=True, packed=packed_of(self.proj.ln))
            return _tokens_to_layout(y, self.use_conv, grid)
        return self._modules_project_out(o, grid, residual)

    def _modules_project_out(self, o: Tensor, grid: Optional[List[int]], residual: Optional[Tensor]) -> Tensor:
        """The same with the `proj` module itself (unfolded, training, TorchScript)."""
        y = self.proj(_tokens_to_layout(o.flatten(2), self.use_conv, grid))
        if residual is None:
            return y
        return residual + y


class LevitAttention(_LevitAttentionBase):
    """LeViT attention block core (no residual) for all three variants (docs/levit.md).

    The packed projection gives per head [q D, k D, third]; third is v (2D, regular), v_half
    (D, armour: value concat(q, v_half)) or nothing (armour_plus: value concat(q, k)).
    """

    def __init__(self, original: nn.Module, backend: str = "auto", value: str | None = None):
        super().__init__(original, backend)
        self.value = value or getattr(original, "value", None) or LEVIT_VALUES[getattr(original, "variant", "regular")]
        if self.value not in LEVIT_VALUES.values():
            raise ValueError(f"LevitAttention: value must be one of {tuple(LEVIT_VALUES.values())}, got {self.value!r}")

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        """attn(x) [+ residual]: LevitBlock passes residual=x, so proj and the add are one GEMM."""
        if torch.jit.is_scripting():
            q, k, v = self._split(_per_head(self.qkv(x), self.num_heads, self.use_conv))
            o = self._scripted_attend(q, k, v, self.value)
            return self._modules_project_out(o, _grid(x, self.use_conv), residual)
        return self._eager_forward(x, residual)

    @eager_forward
    def _eager_forward(self, x: Tensor, residual: Optional[Tensor]) -> Tensor:
        q, k, v = self._split(self._project_heads(self.qkv, x))
        if self.value == "q+v" and v.shape[-1] == 0:
            raise ValueError("LevitAttention: value 'q+v' (armour) needs a v_half part in qkv")
        return self._project_out(self._attend(q, k, v, self.value), _grid(x, self.use_conv), residual)

    def _split(self, qkv: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Per head [q D, k D, third] → q, k and v (None for armour_plus, whose value is concat(q, k))."""
        D = self.key_dim
        v: Optional[Tensor] = None
        if self.value != "q+k":
            v = qkv[..., 2 * D:]
        return qkv[..., :D], qkv[..., D:2 * D], v

    def extra_repr(self):
        return f"value={self.value!r}, num_heads={self.num_heads}, key_dim={self.key_dim}, backend={self.backend!r}"


class LevitAttentionDownsample(_LevitAttentionBase):
    """LeViT subsample attention: q from the stride-2 grid, k / v (width 4D) from the full grid."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            kv, q_out = _per_head(self.kv(x), self.num_heads, self.use_conv), self.q(x)
            D = self.key_dim
            o = self._scripted_attend(_per_head(q_out, self.num_heads, self.use_conv), kv[..., :D], kv[..., D:], "v")
            return self._modules_project_out(o, _grid(q_out, self.use_conv), None)
        return self._eager_forward(x)

    @eager_forward
    def _eager_forward(self, x: Tensor) -> Tensor:
        kv = self._project_heads(self.kv, x)
        q_out = self._project_queries(x)
        q = _per_head(q_out, self.num_heads, self.use_conv)
        D = self.key_dim
        o = self._attend(q, kv[..., :D], kv[..., D:], "v")
        return self._project_out(o, _grid(q_out, self.use_conv))

    def _project_queries(self, x: Tensor) -> Tensor:
        """q = Linear_BN(subsample(x)); folded, linear mode, eval: the GEMM through `linear_act`."""
        *subsample, projection = self.q.children()
        folded = None if self.training or self.use_conv else folded_projection(projection)
        if folded is not None:
            for module in subsample:
                x = module(x)
            return linear_act(x, *folded, backend=self.backend, packed=packed_of(projection))
        return self.q(x)

    def extra_repr(self):
        return f"num_heads={self.num_heads}, key_dim={self.key_dim}, backend={self.backend!r}"


class LevitMlp(Adopted):
    """LeViT MLP: Linear_BN → Hardswish → Linear_BN; folded + eval: one fused GEMM, then one GEMM."""

    def __init__(self, original: nn.Module, backend: str = "auto"):
        super().__init__(original, backend)
        self.use_conv = isinstance(getattr(original.ln1, "linear", original.ln1), nn.Conv2d)
        self.chunk_batches = True  # compiled: row chunks for a static batch (surgery/serving.py static_batch_chunks)

    @torch.jit.unused
    def dense_layers(self) -> List[nn.Module]:
        return [self.ln1, self.ln2]

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        """mlp(x) [+ residual]: the blocks pass residual=x, added in the second GEMM's epilogue."""
        if torch.jit.is_scripting():
            return self._modules_forward(x, residual)
        return self._eager_forward(x, residual)

    def _modules_forward(self, x: Tensor, residual: Optional[Tensor]) -> Tensor:
        """The original computation, module by module (unfolded, training, TorchScript)."""
        y = self.ln2(self.drop(self.act(self.ln1(x))))
        if residual is None:
            return y
        return residual + y

    @eager_forward
    def _eager_forward(self, x: Tensor, residual: Optional[Tensor]) -> Tensor:
        first, second = folded_projection(self.ln1), folded_projection(self.ln2)
        if self.training or first is None or second is None or not _is_hardswish(self.act):
            return self._modules_forward(x, residual)
        tokens = x.permute(0, 2, 3, 1) if self.use_conv else x
        res = None if residual is None else (residual.permute(0, 2, 3, 1) if self.use_conv else residual)
        y = mlp(tokens, first, second, act="hardswish", residual=res, backend=self.backend,
                packed=(packed_of(self.ln1), packed_of(self.ln2)), chunk_batches=self.chunk_batches)
        return y.permute(0, 3, 1, 2) if self.use_conv else y


# ----------------------------------------------------------------------------- residual blocks

def _drops(module) -> bool:
    """True when a DropPath / Dropout actually drops (training with p > 0)."""
    return module.training and getattr(module, "drop_prob", getattr(module, "p", 0.0)) > 0


class LevitBlock(Adopted):
    """x + attn(x), then x + mlp(x), with each residual add done by the block's last GEMM.

    Replaces timm / python_ref `LevitBlock` (same children, same state-dict keys). The children
    are patched to the fused LevitAttention / LevitMlp, which take the residual; when DropPath
    really drops (training with drop_path > 0), or a child is not a fused module, the block
    runs the original `x + drop_path(f(x))`.
    """

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # the original computation
            x = x + self.drop_path1(self.attn(x))
            return x + self.drop_path2(self.mlp(x))
        return self._eager_forward(x)

    @eager_forward
    def _eager_forward(self, x: Tensor) -> Tensor:
        if isinstance(self.attn, LevitAttention) and not _drops(self.drop_path1):
            x = self.attn(x, residual=x)
        else:
            x = x + self.drop_path1(self.attn(x))
        return _mlp_residual(self.mlp, self.drop_path2, x)


class LevitDownsampleBlock(Adopted):
    """Between stages: subsample attention (no residual), then x + mlp(x) with the add in the GEMM.

    Replaces timm / python_ref `LevitDownsample` (same children, same state-dict keys)."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # the original computation
            x = self.attn_downsample(x)
            return x + self.drop_path(self.mlp(x))
        return self._eager_forward(x)

    @eager_forward
    def _eager_forward(self, x: Tensor) -> Tensor:
        return _mlp_residual(self.mlp, self.drop_path, self.attn_downsample(x))


def _mlp_residual(branch: nn.Module, drop_path: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(branch, LevitMlp) and not _drops(drop_path):
        return branch(x, residual=x)
    return x + drop_path(branch(x))
