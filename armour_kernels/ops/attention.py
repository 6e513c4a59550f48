"""Softmax attention as a torch op: input checks, the custom op pair, autograd, backend dispatch.

Layout is FlashAttention's (B, N, H, D), any strides: q, k and v may be views straight into a
packed projection such as qkv(x).view(B, N, 3, H, D)[:, :, i]. The value matrix is chosen by
`value` (docs/attention.md): "v", "q" (Armour), "k", "q+v", "q+k" (the concat is never materialised).

`armour_kernels::attention_fwd` / `attention_bwd` are torch custom ops with fake (meta)
implementations and a registered autograd formula, so `torch.compile(fullgraph=True)` traces
through them and gradients flow to every input, adding up when one tensor plays two parts
(Armour: q is query and value; shared_qk: k is q). The "reference" backend runs python_ref
with plain PyTorch autograd instead.
"""
from __future__ import annotations

import importlib
import math
from typing import Optional

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from .. import cpu
from ..backend import select, wants_grad
from ..constants import MAX_HEAD_DIM, VALUE_SOURCES
from ._empty import zeros_of

# The dtypes each kernel backend runs (the C++ CPU kernels also run float64).
KERNEL_DTYPES = {"triton": (torch.float16, torch.bfloat16, torch.float32),
                 "cpu": (torch.float16, torch.bfloat16, torch.float32, torch.float64)}

_LAUNCHER_MODULES = {"triton": "armour_kernels.triton.attention", "cpu": "armour_kernels.cpu.attention"}


def _launchers(backend: str):
    """(attention_forward, attention_backward) of a kernel backend, imported on first use."""
    module = importlib.import_module(_LAUNCHER_MODULES[backend])
    return module.attention_forward, module.attention_backward


def _value_width(q: Tensor, k: Tensor, v: Optional[Tensor], value: str) -> int:
    widths = {"q": q.shape[-1], "k": k.shape[-1], "v": v.shape[-1] if v is not None else 0}
    return sum(widths[part] for part in value.split("+"))


# ----------------------------------------------------------------------------- custom ops

def _forward(q, k, v, bias, bias_index, value, scale, mask_diagonal, backend):
    """The kernel call: (out, lse). Runs at call time, also under torch.compile (as the op's body)."""
    if bias_index is not None:
        check_index_range(bias_index, bias.shape[1])
    forward, _ = _launchers(backend)
    return forward(q, k, v, bias, bias_index,
                   value=value, scale=scale, mask_diagonal=mask_diagonal)


@torch.library.custom_op("armour_kernels::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Optional[Tensor], bias: Optional[Tensor],
                  bias_index: Optional[Tensor], value: str, scale: float, mask_diagonal: bool,
                  backend: str) -> tuple[Tensor, Tensor]:
    return _forward(q, k, v, bias, bias_index, value, scale, mask_diagonal, backend)


@attention_fwd.register_fake
def _attention_fwd_fake(q, k, v, bias, bias_index, value, scale, mask_diagonal, backend):
    batch, nq, heads, _ = q.shape
    out = q.new_empty((batch, nq, heads, _value_width(q, k, v, value)))
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32  # the CPU kernels' float64 path
    return out, q.new_empty((batch, heads, nq), dtype=lse_dtype)


@torch.library.custom_op("armour_kernels::attention_bwd", mutates_args=())
def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Optional[Tensor], bias: Optional[Tensor],
                  bias_index: Optional[Tensor], out: Tensor, lse: Tensor, value: str, scale: float,
                  mask_diagonal: bool, need_dbias: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dbias); dv / dbias are empty tensors when there is nothing to return."""
    _, backward = _launchers(backend)
    dq, dk, dv, dbias = backward(dout, q, k, v, bias, bias_index, out, lse,
                                 value=value, scale=scale, mask_diagonal=mask_diagonal, need_dbias=need_dbias)
    return (dq, dk, dv if dv is not None else q.new_empty(0),
            dbias if dbias is not None else q.new_empty(0, dtype=torch.float32))


@attention_bwd.register_fake
def _attention_bwd_fake(dout, q, k, v, bias, bias_index, out, lse, value, scale, mask_diagonal, need_dbias,
                        backend):
    dv = q.new_empty(v.shape) if v is not None and "v" in value else q.new_empty(0)
    if need_dbias and bias is not None:
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32  # the CPU kernels' float64 path
        dbias = q.new_empty(bias.shape, dtype=acc)  # every launcher returns it in the bias's own shape
    else:
        dbias = q.new_empty(0, dtype=torch.float32)
    return q.new_empty(q.shape), k.new_empty(k.shape), dv, dbias


# The no-gradient forward as a dispatcher op whose CPU kernel is C++ (csrc/dispatcher_ops.cpp):
# what inference on the "cpu" backend calls, eager, torch.compile'd or exported. attention_fwd's
# Python body costs ~20 µs a call (~80 µs with the caches a model's GEMMs leave behind); this
# op's call goes from inductor's code through the dispatcher straight into the kernel.
torch.library.define("armour_kernels::attention_infer",
                     "(Tensor q, Tensor k, Tensor? v, Tensor? bias, Tensor? bias_index, str value, float scale, "
                     "bool mask_diagonal) -> Tensor")


@torch.library.register_fake("armour_kernels::attention_infer")
def _attention_infer_fake(q, k, v, bias, bias_index, value, scale, mask_diagonal):
    batch, nq, heads, _ = q.shape
    return q.new_empty((batch, nq, heads, _value_width(q, k, v, value)))


# Whether the built extension registered attention_infer's CPU kernel. The extension is loaded here
# (~2 ms), with the schema above: `import armour_kernels` must make both exist before an
# AOTInductor package that calls the op runs.
_CPU_INFER = cpu.built() and torch._C._dispatch_has_kernel_for_dispatch_key("armour_kernels::attention_infer", "CPU")


def _setup_context(ctx, inputs, output):
    q, k, v, bias, bias_index, value, scale, mask_diagonal, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, bias, bias_index, out, lse)
    ctx.options = (value, scale, mask_diagonal, backend)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, bias, bias_index, out, lse = ctx.saved_tensors
    value, scale, mask_diagonal, backend = ctx.options
    need_dbias = bias is not None and ctx.needs_input_grad[3]  # the bias gradient costs a full pass
    dq, dk, dv, dbias = attention_bwd(dout, q, k, v, bias, bias_index, out, lse, value, scale, mask_diagonal,
                                      need_dbias, backend)
    dv = dv if v is not None and "v" in value else None
    if need_dbias:
        dbias = dbias.to(bias.dtype)
    else:
        dbias = None
    return dq, dk, dv, dbias, None, None, None, None, None


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- checks

def _check_tensor(name, t, like=None):
    if not isinstance(t, Tensor):
        raise TypeError(f"attention: {name} must be a tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"attention: {name} must be (B, N, H, D), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"attention: {name} must be a floating-point tensor, got {t.dtype}")
    if like is not None and (t.dtype != like.dtype or t.device != like.device):
        raise TypeError(f"attention: {name} is {t.dtype} on {t.device} but q is {like.dtype} on {like.device}")
    if not 1 <= t.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"attention: head dims from 1 to {MAX_HEAD_DIM} are supported, {name} has {t.shape[-1]}")


def _check_bias(bias, bias_index, q, k):
    batch, nq, heads, _ = q.shape
    nk = k.shape[1]
    if bias_index is not None and bias is None:
        raise ValueError("attention: bias_index needs the bias table (bias=(H, R) tensor)")
    if bias is None:
        return None
    if not isinstance(bias, Tensor) or not bias.is_floating_point():
        raise TypeError(f"attention: bias must be a floating-point tensor, got {getattr(bias, 'dtype', type(bias))}")
    if bias.device != q.device:
        raise TypeError(f"attention: bias is on {bias.device} but q is on {q.device}")
    if bias_index is None:
        try:
            shape = torch.broadcast_shapes(bias.shape, (batch, heads, nq, nk))
        except RuntimeError:
            shape = None
        if shape != (batch, heads, nq, nk):
            raise ValueError(f"attention: bias of shape {tuple(bias.shape)} does not broadcast to "
                             f"(B, H, Nq, Nk) = {(batch, heads, nq, nk)}")
        return None
    if not isinstance(bias_index, Tensor) or bias_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"attention: bias_index must be an int64 tensor, got {getattr(bias_index, 'dtype', bias_index)}")
    if bias.dim() != 2 or bias.shape[0] != heads:
        raise ValueError(f"attention: with bias_index the bias is the (H, R) table, H={heads}; got {tuple(bias.shape)}")
    if tuple(bias_index.shape) != (nq, nk):
        raise ValueError(f"attention: bias_index must be (Nq, Nk) = {(nq, nk)}, got {tuple(bias_index.shape)}")
    if bias_index.device != q.device:
        raise TypeError(f"attention: bias_index is on {bias_index.device} but q is on {q.device}")
    return bias_index.to(torch.int64)


# An index tensor whose range was checked → (its version counter, the table width it was checked against).
_CHECKED_INDICES = WeakTensorKeyDictionary()


def check_index_range(index: Tensor, table_width: int) -> None:
    """ValueError unless every entry of the LeViT index lies in [0, table_width).

    Reading the index costs a pass over Nq·Nk entries (and a device sync on a GPU), so it is done
    once per index tensor and again only after it is modified in place (its version counter moves):
    a module's index is a buffer that never changes. The kernels never read a table out of range.
    """
    key = (index._version, table_width)
    if _CHECKED_INDICES.get(index) == key:
        return
    if index.numel() and (bool(index.min() < 0) or bool(index.max() >= table_width)):
        raise ValueError(f"attention: bias_index has entries outside the table's [0, {table_width})")
    _CHECKED_INDICES[index] = key


@torch.library.custom_op("armour_kernels::checked_index", mutates_args=())
def checked_index(index: Tensor, table_width: int) -> Tensor:
    """A copy of `index` after check_index_range: how the reference backend checks the index inside a
    torch.compile'd graph (the op runs at call time, and its output feeds the table lookup, so the
    check can be neither traced away nor dropped as dead code)."""
    check_index_range(index, table_width)
    return index.clone()


@checked_index.register_fake
def _(index, table_width):
    return torch.empty_like(index)


def _range_checked(index: Tensor, table_width: int) -> Tensor:
    """`index` after its range check: eagerly once per version, inside a compiled graph as checked_index."""
    if torch.compiler.is_compiling():
        return checked_index(index, table_width)
    check_index_range(index, table_width)
    return index


def _check_scale(scale, q) -> float:
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    if not math.isfinite(scale):
        raise ValueError(f"attention: scale must be a finite number, got {scale}")
    return scale


def _check(q, k, v, value, bias, bias_index):
    """Validate the inputs; returns bias_index as int64 (or None)."""
    if value not in VALUE_SOURCES:
        raise ValueError(f"attention: value must be one of {VALUE_SOURCES}, got {value!r}")
    _check_tensor("q", q)
    _check_tensor("k", k, like=q)
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} must agree in B, H and D")
    if "v" in value:
        if v is None:
            raise ValueError(f"attention: value={value!r} needs v")
        _check_tensor("v", v, like=q)
        if v.shape[:3] != k.shape[:3]:
            raise ValueError(f"attention: v {tuple(v.shape)} must match k {tuple(k.shape)} in B, N and H")
    elif v is not None:
        raise ValueError(f"attention: v is given but value={value!r} does not use it")
    if "q" in value and q.shape[1] != k.shape[1]:
        raise ValueError(f"attention: value={value!r} needs as many queries as keys, got Nq={q.shape[1]}, "
                         f"Nk={k.shape[1]}")
    return _check_bias(bias, bias_index, q, k)


# ----------------------------------------------------------------------------- public functions

def _reference(q, k, v, value, scale, bias, bias_index, mask_diagonal):
    """python_ref in its (B, H, N, D) layout, differentiated by plain PyTorch autograd.

    Computed in float32 at least, like the kernels (float16 scores overflow at |q·k| ≳ 250), with
    the bias in that type too, and returned in q's dtype."""
    from python_ref.attention import attention as ref_attention
    from python_ref.attention import levit_bias

    work = torch.promote_types(q.dtype, torch.float32)

    def heads_first(t):
        return t.transpose(1, 2).to(work) if t is not None else None

    if bias is not None and bias_index is not None:
        bias = levit_bias(bias, _range_checked(bias_index, bias.shape[1]))
    bias = bias.to(work) if bias is not None else None
    out = ref_attention(heads_first(q), heads_first(k), heads_first(v), value=value, scale=scale, bias=bias,
                        mask_diagonal=mask_diagonal)
    return out.transpose(1, 2).to(q.dtype)


def attention(q: Tensor, k: Tensor, v: Optional[Tensor] = None, *, value: str = "v", scale: Optional[float] = None,
              bias: Optional[Tensor] = None, bias_index: Optional[Tensor] = None, mask_diagonal: bool = False,
              backend: str = "auto") -> Tensor:
    """softmax(scale·q·kᵀ + bias)·value per head, layout (B, N, H, D) → (B, Nq, H, Dv_total).

    value: "v", "q" (Armour), "k", "q+v", "q+k" (concat along features, q first).
    bias: broadcastable to (B, H, Nq, Nk); or, with bias_index (Nq, Nk) int64, the LeViT
    table (H, R) read as table[h, bias_index[i, j]]. A query row whose every score is -inf gets
    output 0 and gives no gradient (docs/numerics.md).
    mask_diagonal: exclude the diagonal key (shared_qk_nodiag), unless a row has no other key.
    backend: "auto" | "triton" | "cpu" | "reference" (docs/backends.md).
    """
    bias_index = _check(q, k, v, value, bias, bias_index)
    scale = _check_scale(scale, q)
    backend = select("attention", q.device, backend)
    if "v" not in value:
        v = None
    batch, nq, heads, _ = q.shape
    if batch * nq * heads == 0 or k.shape[1] == 0:
        # No query, head or batch (an empty output), or no key (nothing to attend to: zeros, as
        # PyTorch's scaled_dot_product_attention gives). docs/numerics.md.
        return zeros_of((batch, nq, heads, _value_width(q, k, v, value)), q, k, v, bias)
    if backend == "reference":
        return _reference(q, k, v, value, scale, bias, bias_index, mask_diagonal)
    if q.dtype not in KERNEL_DTYPES[backend]:
        raise TypeError(f"attention: backend {backend!r} supports {KERNEL_DTYPES[backend]}, got {q.dtype}; "
                        "use backend='reference' for other dtypes")
    grad = wants_grad(q, k, v, bias)
    if not grad and backend == "cpu" and _CPU_INFER:  # inference on the CPU: the C++ op, eager or compiled
        if bias_index is not None:
            bias_index = _range_checked(bias_index, bias.shape[1])
        out = torch.ops.armour_kernels.attention_infer(q, k, v, bias, bias_index, value, scale, bool(mask_diagonal))
    elif torch.compiler.is_compiling() or grad:
        out, _ = attention_fwd(q, k, v, bias, bias_index, value, scale, bool(mask_diagonal), backend)
    else:  # eager inference: the kernel without the custom op's dispatch (tens of µs a call)
        out, _ = _forward(q, k, v, bias, bias_index, value, scale, bool(mask_diagonal), backend)
    return out


def armour_attention(q: Tensor, k: Tensor, **kwargs) -> Tensor:
    """Armour attention softmax(s·q·kᵀ)·q (docs/attention.md): `attention` with value="q", no v."""
    return attention(q, k, value="q", **kwargs)


__all__ = ["attention", "armour_attention", "VALUE_SOURCES"]
