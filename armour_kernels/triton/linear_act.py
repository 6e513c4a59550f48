"""Triton GEMM with Hardswish folded into it: LeViT's folded `Linear_BN` + activation in one launch.

y = act_out(act_in(x) · Wᵀ + b) [+ r], W in nn.Linear layout (N, K). Two LeViT patterns:

    linear_hardswish_forward  act_out: MLP first layer (Linear_BN → Hardswish), stem-free GEMMs
    hardswish_linear_forward  act_in:  attention `proj` (Hardswish → Linear_BN), applied to the
                              x tile as it is loaded, so the activated tensor never goes to memory

The optional residual r (LeViT's x + block(x)) is added in the epilogue, so a block's output
projection and its residual add are one launch (`proj` + residual, MLP `ln2` + residual).

After BN folding (armour_kernels.fold) the bias `b` carries the BatchNorm. Forward only: these are
inference kernels (training keeps BatchNorm in batch-statistics mode, which cannot be folded).
fp32 / fp16 / bf16 inputs, fp32 accumulation, output in x's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backend import interpreting as triton_interpreting
from . import _interpreter_compat  # noqa: F401  (NumPy 2.4 vs the Triton interpreter)
from ._grid import flat_grid, flat_program_id
from ._tuning import ForcedConfigs, shortlist


@triton.jit
def _hardswish(x):
    return x * tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) * (1.0 / 6.0)


# M (the batch's rows) is not specialised, so a new batch size neither recompiles nor retunes.
@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _linear_act_kernel(
    x_ptr, w_ptr, b_ptr, r_ptr, y_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_rm, stride_rn, stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT_IN: tl.constexpr, ACT_OUT: tl.constexpr, IEEE_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped launch order: GROUP_M row blocks share each column block of W while it is in L2.
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    pid64 = flat_program_id()  # one flat grid (`_grid.flat_grid`): any M within CUDA's grid limits
    if pid64 // num_n >= num_m:  # a padding program of a stacked grid
        return
    pid = pid64.to(tl.int32)  # M·N outputs are addressable, so their blocks fit int32
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % group_size
    pid_n = (pid % (GROUP_M * num_n)) // group_size

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rm[:, None].to(tl.int64) * stride_xm + rk[None, :] * stride_xk
    w_ptrs = w_ptr + rn[None, :].to(tl.int64) * stride_wn + rk[:, None] * stride_wk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + rk) < K
        x = tl.load(x_ptrs, mask=(rm[:, None] < M) & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & (rn[None, :] < N), other=0.0)
        if ACT_IN:  # hardswish(0) = 0, so the masked padding stays zero
            x = _hardswish(x.to(tl.float32)).to(w.dtype)
        if IEEE_FP32:
            acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if ACT_OUT:
        acc = _hardswish(acc)
    inside = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_RES:
        r_ptrs = r_ptr + rm[:, None].to(tl.int64) * stride_rm + rn[None, :] * stride_rn
        acc += tl.load(r_ptrs, mask=inside, other=0.0).to(tl.float32)
    y_ptrs = y_ptr + rm[:, None].to(tl.int64) * stride_ym + rn[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=inside)


def _gpu_configs():
    shapes = [(128, 128, 32, 4, 4), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (128, 128, 64, 3, 8),
              (64, 64, 64, 4, 4), (128, 256, 32, 3, 8), (256, 128, 32, 3, 8)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=s, num_warps=w)
            for bm, bn, bk, s, w in shapes]


# M by power-of-two bucket (the row count decides how many programs fill the GPU; a retune per
# bucket, not per batch size), N and K exactly (the weight's shape, fixed per layer).
LINEAR_ACT_KEY = ["M_BUCKET", "N", "K", "HAS_BIAS", "HAS_RES", "ACT_IN", "ACT_OUT", "IEEE_FP32"]


def _prune(configs, named_args, **kwargs):
    """No tile wider than the (padded) output it covers, then the first `_tuning.SHORTLIST`."""
    meta = {**named_args, **kwargs}
    cols = max(16, triton.next_power_of_2(meta["N"]))
    narrow = [c for c in configs if c.kwargs["BLOCK_M"] <= max(64, meta["M_BUCKET"]) and c.kwargs["BLOCK_N"] <= max(64, cols)]
    return shortlist(narrow or configs[-1:])


_linear_act_autotuned = triton.autotune(configs=_gpu_configs(), key=LINEAR_ACT_KEY,
                                        prune_configs_by={"early_config_prune": _prune})(_linear_act_kernel)
FORCED = ForcedConfigs(["linear_act"])


def forced_config(config):
    """Inside (a context manager), linear_act launches with `config` instead of autotuning."""
    return FORCED.use(linear_act=config)

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(x, weight, bias, residual):
    if x.dtype not in _DTYPES:
        raise TypeError(f"linear_act: x must be float32/float16/bfloat16, got {x.dtype}")
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear_act: x (..., {x.shape[-1]}) does not match weight {tuple(weight.shape)} "
                         "(expected (out_features, in_features))")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"linear_act: x, weight and bias must share a dtype, got {x.dtype}, {weight.dtype}"
                        f"{'' if bias is None else ', ' + str(bias.dtype)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear_act: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if residual is not None and (residual.shape != (*x.shape[:-1], weight.shape[0]) or residual.dtype != x.dtype):
        raise ValueError(f"linear_act: residual must be {x.dtype} of shape {(*x.shape[:-1], weight.shape[0])}, got "
                         f"{residual.dtype} {tuple(residual.shape)}")
    devices = {x.device, weight.device} | {t.device for t in (bias, residual) if t is not None}
    if len(devices) != 1:
        raise RuntimeError(f"linear_act: tensors on different devices: {devices}")


def linear_act_forward(x, weight, bias=None, *, act_in=False, act_out=False, residual=None):
    """y = act_out(act_in(x) @ weight.T + bias) [+ residual] with act = Hardswish; x, residual any strides."""
    _check(x, weight, bias, residual)
    lead, K, N = x.shape[:-1], x.shape[-1], weight.shape[0]
    x2 = x.reshape(-1, K)  # a view whenever the leading dims can merge; strides go to the kernel
    M = x2.shape[0]
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if M == 0 or N == 0:
        return y.view(*lead, N)
    r2 = residual.reshape(-1, N) if residual is not None else y  # y: a dummy pointer, never read
    if K == 0:
        y.zero_()
        if bias is not None:
            y += bias
        y = torch.nn.functional.hardswish(y) if act_out else y
        return (y + r2 if residual is not None else y).view(*lead, N)
    b = bias if bias is not None else y  # dummy pointer, never read
    ieee = x.dtype == torch.float32 and (triton_interpreting() or not torch.backends.cuda.matmul.allow_tf32)
    args = (x2, weight, b, r2, y, M, N, K, triton.next_power_of_2(M), x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1),
            r2.stride(0), r2.stride(1), y.stride(0), y.stride(1))
    flags = dict(HAS_BIAS=bias is not None, HAS_RES=residual is not None, ACT_IN=act_in, ACT_OUT=act_out, IEEE_FP32=ieee)
    forced = FORCED.get("linear_act")
    if forced is not None:
        blocks = triton.cdiv(M, forced.kwargs["BLOCK_M"]) * triton.cdiv(N, forced.kwargs["BLOCK_N"])
        extra = {} if triton_interpreting() else dict(num_warps=forced.num_warps, num_stages=forced.num_stages)
        _linear_act_kernel[flat_grid(blocks)](*args, **flags, **forced.kwargs, **extra)
    elif triton_interpreting():
        # Few, large programs: the interpreter's cost is per program and per loop step.
        bm = min(64, max(16, triton.next_power_of_2(M)))
        blocks = dict(BLOCK_M=bm, BLOCK_N=128, BLOCK_K=64, GROUP_M=4)
        _linear_act_kernel[flat_grid(triton.cdiv(M, bm) * triton.cdiv(N, 128))](*args, **flags, **blocks)
    else:
        def grid(meta):
            return flat_grid(triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]))
        _linear_act_autotuned[grid](*args, **flags)
    return y.view(*lead, N)


def linear_hardswish_forward(x, weight, bias=None):
    """hardswish(x @ weight.T + bias) in one kernel (LeViT folded Linear_BN + Hardswish)."""
    return linear_act_forward(x, weight, bias, act_out=True)


def hardswish_linear_forward(x, weight, bias=None):
    """hardswish(x) @ weight.T + bias in one kernel (LeViT attention `proj`: Hardswish → Linear_BN)."""
    return linear_act_forward(x, weight, bias, act_in=True)
