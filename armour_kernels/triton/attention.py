"""Flash-style softmax attention in Triton: one kernel family for every value source and bias form.

Layout (B, N, H, D), any strides. Forward: online softmax over key blocks, fp32 accumulation,
the row log-sum-exp saved. Backward (FlashAttention-2): delta = rowsum(dO∘O), then one kernel
over key blocks (dK, the value-path gradients Pᵀ·dO, the bias gradient) and one over query
blocks (dQ). No atomics except the LeViT table gradient (many (i, j) share a table entry).

The value matrix is up to two parts read in place, [part1 | part2] along the feature dim:

    value   part1  part2        the value-path gradient Pᵀ·dO of a part goes to
    "v"     v      -            v → dv
    "q"     q      -            q → written into the fp32 dQ buffer by the key-block kernel,
    "k"     k      -                 which the query-block kernel then adds its s·dS·K to
    "q+v"   q      v            k → added to dK in the key-block kernel (same rows j)
    "q+k"   q      k

so Armour ("q") never has a dV tensor, and the concat of "q+v" / "q+k" is never materialised.

Bias: none; dense (B, H, Nq, Nk) through strides (stride 0 for broadcast dims); or the LeViT
table (H, R) gathered in-kernel as table[h, idx[i, j]].
Diagonal mask (docs/attention.md, `shared_qk_nodiag`): scores[i, i] = -inf unless the row has no other
finite key; which rows keep their diagonal is worked out on the host (`_keep_diagonal`), so the
forward and both backward kernels agree on one mask.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..backend import interpreting as triton_interpreting
from . import _interpreter_compat  # noqa: F401  (NumPy 2.4 vs the Triton interpreter)

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

# Where a value part comes from (constexpr codes shared by host and kernels).
SRC_NONE, SRC_V, SRC_Q, SRC_K = 0, 1, 2, 3
VALUE_PARTS = {"v": (SRC_V, SRC_NONE), "q": (SRC_Q, SRC_NONE), "k": (SRC_K, SRC_NONE),
               "q+v": (SRC_Q, SRC_V), "q+k": (SRC_Q, SRC_K)}
# Bias forms.
BIAS_NONE, BIAS_DENSE, BIAS_TABLE = 0, 1, 2
MAX_HEAD_DIM = 256
# The LeViT table gradient is a scatter-add of B·Nq·Nk scores into H·R entries (R ≈ Nk): every
# entry takes ~B·Nq atomic adds. Images b go to partial tables b % TABLE_GRAD_SLOTS, summed after
# the kernel, so those adds contend on 32× as many addresses; the partials are only 32·H·R floats.
TABLE_GRAD_SLOTS = 32


# ----------------------------------------------------------------------------- device helpers

@triton.jit
def _tile(base, offs_a, offs_b, stride_a, stride_b, lim_a, lim_b):
    """Load the (len(offs_a), len(offs_b)) tile base[a*stride_a + b*stride_b], zeros outside the limits."""
    ptrs = base + offs_a[:, None] * stride_a + offs_b[None, :] * stride_b
    return tl.load(ptrs, mask=(offs_a[:, None] < lim_a) & (offs_b[None, :] < lim_b), other=0.0)


@triton.jit
def _program(H, BLOCK: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr):
    """Where a program works: grid (row blocks, B·H) → bh, b, h, its rows and the feature offsets."""
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # int64 offsets: a batch stride times b can pass 2**31
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    return bh, b, bh % H, offs, tl.arange(0, BLOCK_DK), tl.arange(0, BLOCK_D1), tl.arange(0, BLOCK_D2)


@triton.jit
def _scores(a, b_mat, rows, cols, b, h, NQ, NK, qk_scale,
            Bias, BiasIdx, KeepDiag, sbb, sbh, sbm, sbn, sim, sin, sfb, sfh,
            BIAS: tl.constexpr, MASK_DIAG: tl.constexpr, PREC: tl.constexpr):
    """A tile of scores a·b_mat in log2 units, (s·q·kᵀ + bias)·log2(e), masked to -inf.

    `rows` / `cols` are the query index i and key index j of each tile element, broadcastable
    to the tile: (offs_m[:, None], offs_n[None, :]) for a query-major tile (a = q, b_mat = kᵀ),
    (offs_m[None, :], offs_n[:, None]) for a key-major one (a = k, b_mat = qᵀ), which the dK/dV
    kernel uses so that no register tile has to be transposed.
    """
    s = tl.dot(a, b_mat, input_precision=PREC) * qk_scale
    inside = (rows < NQ) & (cols < NK)
    if BIAS == 1:  # dense (B, H, Nq, Nk) through strides
        ptrs = Bias + b * sbb + h * sbh + rows * sbm + cols * sbn
        s += tl.load(ptrs, mask=inside, other=0.0).to(tl.float32) * 1.4426950408889634
    if BIAS == 2:  # LeViT: table (H, R) gathered through idx (Nq, Nk)
        idx = tl.load(BiasIdx + rows * sim + cols * sin, mask=inside, other=0)
        s += tl.load(Bias + h * sbh + idx * sbn, mask=inside, other=0.0).to(tl.float32) * 1.4426950408889634
    valid = cols < NK
    if MASK_DIAG:
        keep = tl.load(KeepDiag + b * sfb + h * sfh + rows, mask=rows < NQ, other=0)
        valid = valid & ((rows != cols) | (keep != 0))
    return tl.where(valid, s, float("-inf"))


# ----------------------------------------------------------------------------- forward

@triton.jit
def _attention_fwd_kernel(
        Q, K, V1, V2, Bias, BiasIdx, KeepDiag, Out, Lse,
        sqb, sqn, sqh, sqd, skb, skn, skh, skd,
        s1b, s1n, s1h, s1d, s2b, s2n, s2h, s2d,
        sbb, sbh, sbm, sbn, sim, sin, sfb, sfh,
        sob, son, soh,
        H, NQ, NK, DQK, D1, D2, qk_scale,
        BIAS: tl.constexpr, MASK_DIAG: tl.constexpr, HAS_P2: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr):
    bh, b, h, offs_m, offs_dk, offs_d1, offs_d2 = _program(H, BLOCK_M, BLOCK_DK, BLOCK_D1, BLOCK_D2)
    K += b * skb + h * skh
    V1 += b * s1b + h * s1h
    V2 += b * s2b + h * s2h

    q = _tile(Q + b * sqb + h * sqh, offs_m, offs_dk, sqn, sqd, NQ, DQK)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_D1), tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_D2), tl.float32)
    for start_n in range(0, NK, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kT = _tile(K, offs_dk, offs_n, skd, skn, DQK, NK)
        s = _scores(q, kT, offs_m[:, None], offs_n[None, :], b, h, NQ, NK, qk_scale, Bias, BiasIdx, KeepDiag,
                    sbb, sbh, sbm, sbn, sim, sin, sfb, sfh, BIAS, MASK_DIAG, PREC)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen only -inf so far: subtract 0 instead, so exp2 gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v1 = _tile(V1, offs_n, offs_d1, s1n, s1d, NK, D1)
        acc1 = acc1 * alpha[:, None] + tl.dot(p.to(v1.dtype), v1, input_precision=PREC)
        if HAS_P2:
            v2 = _tile(V2, offs_n, offs_d2, s2n, s2d, NK, D2)
            acc2 = acc2 * alpha[:, None] + tl.dot(p.to(v2.dtype), v2, input_precision=PREC)
        m_i = m_new

    row_ok = offs_m < NQ
    inv_l = 1.0 / tl.where(l_i == 0.0, 1.0, l_i)  # a fully masked row writes zeros, lse = -inf
    out_rows = Out + b * sob + h * soh + offs_m[:, None] * son
    tl.store(out_rows + offs_d1[None, :], (acc1 * inv_l[:, None]).to(Out.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d1[None, :] < D1))
    if HAS_P2:
        tl.store(out_rows + D1 + offs_d2[None, :], (acc2 * inv_l[:, None]).to(Out.dtype.element_ty),
                 mask=row_ok[:, None] & (offs_d2[None, :] < D2))
    tl.store(Lse + bh * NQ + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=row_ok)


# ----------------------------------------------------------------------------- backward

@triton.jit
def _attention_bwd_preprocess_kernel(Out, DO, Delta, sob, son, soh, sdb, sdn, sdh, sdd,
                                     H, NQ, DTOT, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta[b, h, i] = Σ_d dO[b, i, h, d]·O[b, i, h, d] (the rowsum(dO∘O) of dS = P∘(dP − delta))."""
    bh, b, h, offs_m, offs_d, _, _ = _program(H, BLOCK_M, BLOCK_D, BLOCK_D, BLOCK_D)
    o = _tile(Out + b * sob + h * soh, offs_m, offs_d, son, 1, NQ, DTOT).to(tl.float32)
    do = _tile(DO + b * sdb + h * sdh, offs_m, offs_d, sdn, sdd, NQ, DTOT).to(tl.float32)
    tl.store(Delta + bh * NQ + offs_m, tl.sum(o * do, 1), mask=offs_m < NQ)


@triton.jit
def _attention_bwd_dkdv_kernel(
        Q, K, V1, V2, Bias, BiasIdx, KeepDiag, DO, Lse, Delta, DK, DV, DQAcc, DBias,
        sqb, sqn, sqh, sqd, skb, skn, skh, skd,
        s1b, s1n, s1h, s1d, s2b, s2n, s2h, s2d,
        sbb, sbh, sbm, sbn, sim, sin, sfb, sfh,
        sdb, sdn, sdh, sdd,
        H, NQ, NK, DQK, D1, D2, qk_scale, sm_scale, dtable_stride, dtable_slots,
        P1: tl.constexpr, P2: tl.constexpr,
        BIAS: tl.constexpr, MASK_DIAG: tl.constexpr, NEED_DBIAS: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr):
    """One key block: dK = s·dSᵀ·Q, the value-path gradients Pᵀ·dO of both parts, the bias gradient."""
    bh, b, h, offs_n, offs_dk, offs_d1, offs_d2 = _program(H, BLOCK_N, BLOCK_DK, BLOCK_D1, BLOCK_D2)
    Q += b * sqb + h * sqh
    DO += b * sdb + h * sdh

    # Key-major throughout (the tiles are (keys, queries), as in the Triton tutorial's backward):
    # Pᵀ and dSᵀ come out of their dots already transposed, so every transpose below is of a
    # tile loaded from memory (free: a shared-memory view), never of a register tile.
    k = _tile(K + b * skb + h * skh, offs_n, offs_dk, skn, skd, NK, DQK)
    v1 = _tile(V1 + b * s1b + h * s1h, offs_n, offs_d1, s1n, s1d, NK, D1)
    dk = tl.zeros((BLOCK_N, BLOCK_DK), tl.float32)
    dv1 = tl.zeros((BLOCK_N, BLOCK_D1), tl.float32)
    dv2 = tl.zeros((BLOCK_N, BLOCK_D2), tl.float32)
    if P2 != 0:
        v2 = _tile(V2 + b * s2b + h * s2h, offs_n, offs_d2, s2n, s2d, NK, D2)
    for start_m in range(0, NQ, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < NQ
        qT = _tile(Q, offs_dk, offs_m, sqd, sqn, DQK, NQ)
        sT = _scores(k, qT, offs_m[None, :], offs_n[:, None], b, h, NQ, NK, qk_scale, Bias, BiasIdx, KeepDiag,
                     sbb, sbh, sbm, sbn, sim, sin, sfb, sfh, BIAS, MASK_DIAG, PREC)
        lse2 = tl.load(Lse + bh * NQ + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(Delta + bh * NQ + offs_m, mask=row_ok, other=0.0)
        pT = tl.where(row_ok[None, :], tl.exp2(sT - lse2[None, :]), 0.0)
        do1 = _tile(DO, offs_m, offs_d1, sdn, sdd, NQ, D1)
        dv1 += tl.dot(pT.to(do1.dtype), do1, input_precision=PREC)
        dpT = tl.dot(v1, tl.trans(do1), input_precision=PREC)
        if P2 != 0:
            do2 = _tile(DO + D1 * sdd, offs_m, offs_d2, sdn, sdd, NQ, D2)
            dv2 += tl.dot(pT.to(do2.dtype), do2, input_precision=PREC)
            dpT += tl.dot(v2, tl.trans(do2), input_precision=PREC)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=PREC)
        if NEED_DBIAS:
            inside = row_ok[None, :] & (offs_n[:, None] < NK)
            if BIAS == 1:  # full (B, H, Nq, Nk) fp32, contiguous
                ptrs = DBias + (bh * NQ + offs_m[None, :]).to(tl.int64) * NK + offs_n[:, None]
                tl.store(ptrs, dsT, mask=inside)
            if BIAS == 2:  # reduced into the (H, R) table: this batch's slot of the (slots, H, R) partials
                idx = tl.load(BiasIdx + offs_m[None, :] * sim + offs_n[:, None] * sin, mask=inside, other=0)
                slot = (b % dtable_slots) * H + h
                tl.atomic_add(DBias + slot * dtable_stride + idx, dsT, mask=inside)

    # Route the value-path gradients to the tensor each part was read from.
    dk = dk * sm_scale
    if P1 == 3:  # SRC_K: "k"
        dk += dv1
    if P2 == 3:  # SRC_K: "q+k"
        dk += dv2
    key_rows = (b * NK + offs_n[:, None]) * H + h  # contiguous (B, Nk, H, D) outputs
    n_ok = offs_n[:, None] < NK
    tl.store(DK + key_rows * DQK + offs_dk[None, :], dk.to(DK.dtype.element_ty),
             mask=n_ok & (offs_dk[None, :] < DQK))
    if P1 == 1:  # SRC_V: "v"
        tl.store(DV + key_rows * D1 + offs_d1[None, :], dv1.to(DV.dtype.element_ty),
                 mask=n_ok & (offs_d1[None, :] < D1))
    if P2 == 1:  # SRC_V: "q+v"
        tl.store(DV + key_rows * D2 + offs_d2[None, :], dv2.to(DV.dtype.element_ty),
                 mask=n_ok & (offs_d2[None, :] < D2))
    if P1 == 2:  # SRC_Q: q is (the first part of) the value: its Pᵀ·dO, for the dQ kernel to add to
        tl.store(DQAcc + key_rows * DQK + offs_dk[None, :], dv1, mask=n_ok & (offs_dk[None, :] < DQK))


@triton.jit
def _attention_bwd_dq_kernel(
        Q, K, V1, V2, Bias, BiasIdx, KeepDiag, DO, Lse, Delta, DQ, DQAcc,
        sqb, sqn, sqh, sqd, skb, skn, skh, skd,
        s1b, s1n, s1h, s1d, s2b, s2n, s2h, s2d,
        sbb, sbh, sbm, sbn, sim, sin, sfb, sfh,
        sdb, sdn, sdh, sdd,
        H, NQ, NK, DQK, D1, D2, qk_scale, sm_scale,
        P1: tl.constexpr, P2: tl.constexpr,
        BIAS: tl.constexpr, MASK_DIAG: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr):
    """One query block: dQ = s·dS·K (+ the value-path part the key-block kernel left in DQAcc)."""
    bh, b, h, offs_m, offs_dk, offs_d1, offs_d2 = _program(H, BLOCK_M, BLOCK_DK, BLOCK_D1, BLOCK_D2)
    row_ok = offs_m < NQ
    K += b * skb + h * skh
    V1 += b * s1b + h * s1h
    V2 += b * s2b + h * s2h

    q = _tile(Q + b * sqb + h * sqh, offs_m, offs_dk, sqn, sqd, NQ, DQK)
    do1 = _tile(DO + b * sdb + h * sdh, offs_m, offs_d1, sdn, sdd, NQ, D1)
    if P2 != 0:
        do2 = _tile(DO + b * sdb + h * sdh + D1 * sdd, offs_m, offs_d2, sdn, sdd, NQ, D2)
    lse2 = tl.load(Lse + bh * NQ + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(Delta + bh * NQ + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_DK), tl.float32)
    for start_n in range(0, NK, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _tile(K, offs_n, offs_dk, skn, skd, NK, DQK)
        s = _scores(q, tl.trans(k), offs_m[:, None], offs_n[None, :], b, h, NQ, NK, qk_scale, Bias, BiasIdx, KeepDiag,
                    sbb, sbh, sbm, sbn, sim, sin, sfb, sfh, BIAS, MASK_DIAG, PREC)
        p = tl.where(row_ok[:, None], tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do1, _tile(V1, offs_d1, offs_n, s1d, s1n, D1, NK), input_precision=PREC)
        if P2 != 0:
            dp += tl.dot(do2, _tile(V2, offs_d2, offs_n, s2d, s2n, D2, NK), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)

    dq = dq * sm_scale
    rows = (b * NQ + offs_m[:, None]) * H + h  # contiguous (B, Nq, H, Dk)
    mask = row_ok[:, None] & (offs_dk[None, :] < DQK)
    if P1 == 2:  # SRC_Q
        dq += tl.load(DQAcc + rows * DQK + offs_dk[None, :], mask=mask, other=0.0)
    tl.store(DQ + rows * DQK + offs_dk[None, :], dq.to(DQ.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- block sizes

def _block_dim(d: int) -> int:
    """Feature dims are padded (with masks) to a power of two, at least 16 for tl.dot."""
    return max(16, triton.next_power_of_2(d))


def _prune(configs, named_args, **kwargs):
    """Drop tiles too wide for shared memory / registers at large head dims (d up to 256)."""
    meta = {**named_args, **kwargs}
    has_second = meta.get("HAS_P2", False) or meta.get("P2", 0) != 0
    width = meta["BLOCK_DK"] + meta["BLOCK_D1"] + (meta["BLOCK_D2"] if has_second else 0)
    kept = [c for c in configs
            if c.kwargs["BLOCK_M"] * width <= 128 * 320 and c.kwargs["BLOCK_N"] * width <= 64 * 320]
    return kept or configs[-1:]


# (BLOCK_M, BLOCK_N, num_warps, num_stages). Chosen offline from the sm_90 cubins (ptxas -v, bf16,
# armour_kernels/triton/cubin.py): each list keeps configs that compile without register spills and with
# wgmma for head dims 16–64, plus narrower ones that still fit at 128–256 (see `_prune`).
# The dK/dV kernel's tiles are key-major, so there BLOCK_N is the wgmma M dimension.
_FWD_CONFIGS = [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3), (64, 32, 4, 2), (32, 32, 4, 2)]
_DKDV_CONFIGS = [(64, 64, 8, 3), (64, 64, 8, 2), (32, 128, 8, 3), (32, 64, 4, 3), (16, 64, 4, 3),
                 (64, 32, 8, 3), (128, 32, 8, 3), (32, 32, 4, 2)]
_DQ_CONFIGS = [(64, 64, 8, 3), (128, 64, 8, 2), (64, 128, 8, 2), (128, 32, 8, 3), (64, 32, 8, 3),
               (32, 128, 8, 3), (16, 64, 4, 3), (32, 32, 4, 2)]


def _configs(shapes):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


_KEY = ["NQ", "NK", "BLOCK_DK", "BLOCK_D1", "BLOCK_D2", "BIAS", "MASK_DIAG", "PREC"]
_fwd_tuned = triton.autotune(_configs(_FWD_CONFIGS), key=_KEY + ["HAS_P2"],
                             prune_configs_by={"early_config_prune": _prune})(_attention_fwd_kernel)
_dkdv_tuned = triton.autotune(_configs(_DKDV_CONFIGS), key=_KEY + ["P1", "P2", "NEED_DBIAS"], reset_to_zero=["DBias"],
                              prune_configs_by={"early_config_prune": _prune})(_attention_bwd_dkdv_kernel)
_dq_tuned = triton.autotune(_configs(_DQ_CONFIGS), key=_KEY + ["P1", "P2"],
                            prune_configs_by={"early_config_prune": _prune})(_attention_bwd_dq_kernel)

# Under the interpreter (CPU tensors): one small fixed tile, so tests stay fast.
_INTERPRETER_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32}


def _launch(kernel, tuned, grid_over, grid_rows, bh, *args, **meta):
    """Autotuned on CUDA; one fixed small configuration in the interpreter.

    `grid_over` names the block size that tiles the `grid_rows` rows of the launch grid."""
    if triton_interpreting():
        grid = (triton.cdiv(grid_rows, _INTERPRETER_BLOCKS[grid_over]), bh)
        kernel[grid](*args, **meta, **_INTERPRETER_BLOCKS)
    else:
        tuned[lambda m: (triton.cdiv(grid_rows, m[grid_over]), bh)](*args, **meta)


# ----------------------------------------------------------------------------- host side

def _empty(shape, dtype, device):
    """Every output buffer comes from here (tests pre-fill it with NaN to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _value_parts(q, k, v, value):
    if value not in VALUE_PARTS:
        raise ValueError(f"value must be one of {tuple(VALUE_PARTS)}, got {value!r}")
    codes = VALUE_PARTS[value]
    source = {SRC_V: v, SRC_Q: q, SRC_K: k}
    if SRC_V in codes and v is None:
        raise ValueError(f"value={value!r} needs v")
    parts = [source[c] if c != SRC_NONE else None for c in codes]
    return codes, parts


def _keep_diagonal(q, k, bias, bias_index):
    """(B, H, Nq) int8: rows whose diagonal survives the mask because no other key is finite."""
    batch, nq, heads, _ = q.shape
    nk = k.shape[1]
    rows = torch.arange(nq, device=q.device)
    if bias is None:  # scores are finite: only a lone key (Nk == 1) leaves row 0 nothing else
        keep = (rows < nk) & (nk == 1)
        return keep.to(torch.int8).expand(batch, heads, nq)
    dense = bias[:, bias_index] if bias_index is not None else bias
    off_diag = ~torch.eye(nq, nk, dtype=torch.bool, device=q.device)
    keep = ~(torch.isfinite(dense) & off_diag).any(-1) & (rows < nk)
    return keep.to(torch.int8).expand(batch, heads, nq)


def _strides4(t):
    return (t.stride(0), t.stride(1), t.stride(2), t.stride(3))


@dataclass
class _Problem:
    """What every launch of one attention call shares: the value parts, bias form, sizes, strides."""
    codes: tuple          # (part1, part2) sources, SRC_*
    parts: tuple          # the tensors the value parts are read from (part2 = part1 when absent)
    scale: float
    bias_ptrs: tuple      # bias (dense or table), index, keep-diagonal flags (q as a placeholder)
    strides: tuple        # q, k, part1, part2 (4 each), then bias (4), index (2), keep-diagonal (2)
    sizes: dict           # H, NQ, NK, D1, D2
    constexprs: dict


def _compact_index(bias_index, entries: int):
    """The table index in the narrowest integer type that holds it.

    Every program reads the index tile of its scores, so one call loads B·H·Nq·Nk index entries
    (all the same Nq·Nk, from L2): at LeViT-128S's first stage, batch 2048, int64 would be 2.5 GB
    of L2 reads per attention call against 0.2 GB of q, k, v (0.4 GB as the programs read them).
    int16 is a quarter of that; the table itself (H·R values) stays in L1.
    """
    return bias_index.to(torch.int16 if entries <= 2 ** 15 else torch.int32)


def _bias_args(q, k, bias, bias_index, mask_diagonal):
    """Pointers, strides and constexpr form of the bias, its index and the keep-diagonal flags."""
    keep = _keep_diagonal(q, k, bias, bias_index) if mask_diagonal else None
    if bias is None:
        form, sb, si = BIAS_NONE, (0, 0, 0, 0), (0, 0)
    elif bias_index is not None:
        bias_index = _compact_index(bias_index, bias.shape[1])
        form, sb, si = BIAS_TABLE, (0, bias.stride(0), 0, bias.stride(1)), bias_index.stride()
    else:
        form, sb, si = BIAS_DENSE, _strides4(bias), (0, 0)
    sf = (keep.stride(0), keep.stride(1)) if keep is not None else (0, 0)
    ptrs = tuple(t if t is not None else q for t in (bias, bias_index, keep))
    return form, ptrs, (*sb, *si, *sf)


def _problem(q, k, v, bias, bias_index, value, scale, mask_diagonal) -> _Problem:
    if q.shape[-1] > MAX_HEAD_DIM or (v is not None and v.shape[-1] > MAX_HEAD_DIM):
        raise ValueError(f"head dims up to {MAX_HEAD_DIM} are supported, got q {q.shape[-1]}"
                         + (f", v {v.shape[-1]}" if v is not None else ""))
    codes, (p1, p2) = _value_parts(q, k, v, value)
    if SRC_Q in codes and q.shape[1] != k.shape[1]:
        raise ValueError(f"value={value!r} needs Nq == Nk, got {q.shape[1]} and {k.shape[1]}")
    p2 = p2 if p2 is not None else p1
    d1, d2 = p1.shape[-1], (p2.shape[-1] if codes[1] != SRC_NONE else 0)
    form, bias_ptrs, bias_strides = _bias_args(q, k, bias, bias_index, mask_diagonal)
    constexprs = dict(BIAS=form, MASK_DIAG=bool(mask_diagonal),
                      PREC="ieee" if q.dtype == torch.float32 else None,  # fp32 exact, not TF32
                      BLOCK_DK=_block_dim(q.shape[-1]), BLOCK_D1=_block_dim(d1), BLOCK_D2=_block_dim(d2))
    return _Problem(codes=codes, parts=(p1, p2), scale=q.shape[-1] ** -0.5 if scale is None else float(scale),
                    bias_ptrs=bias_ptrs,
                    strides=(*_strides4(q), *_strides4(k), *_strides4(p1), *_strides4(p2), *bias_strides),
                    sizes=dict(H=q.shape[2], NQ=q.shape[1], NK=k.shape[1], D1=d1, D2=d2), constexprs=constexprs)


def _on_device(t):
    return torch.cuda.device(t.device) if t.is_cuda else nullcontext()


def attention_forward(q, k, v, bias, bias_index, *, value, scale, mask_diagonal):
    """softmax(scale·q·kᵀ + bias)·value → (out (B, Nq, H, Dv_total) contiguous, lse (B, H, Nq) fp32)."""
    pb = _problem(q, k, v, bias, bias_index, value, scale, mask_diagonal)
    batch, nq, heads, dk = q.shape
    n = pb.sizes
    out = _empty((batch, nq, heads, n["D1"] + n["D2"]), q.dtype, q.device)
    lse = _empty((batch, heads, nq), torch.float32, q.device)
    if batch * heads * nq == 0:
        return out, lse
    with _on_device(q):
        _launch(_attention_fwd_kernel, _fwd_tuned, "BLOCK_M", nq, batch * heads,
                q, k, *pb.parts, *pb.bias_ptrs, out, lse, *pb.strides,
                out.stride(0), out.stride(1), out.stride(2),
                heads, nq, n["NK"], dk, n["D1"], n["D2"], pb.scale * LOG2E,
                HAS_P2=pb.codes[1] != SRC_NONE, **pb.constexprs)
    return out, lse


def attention_backward(dout, q, k, v, bias, bias_index, out, lse, *, value, scale, mask_diagonal, need_dbias):
    """Gradients (dq, dk, dv, dbias) of `attention_forward` (see the module docstring for the routing)."""
    pb = _problem(q, k, v, bias, bias_index, value, scale, mask_diagonal)
    batch, nq, heads, dk = q.shape
    n = pb.sizes
    nk, dev = n["NK"], q.device
    dq = _empty(q.shape, q.dtype, dev)
    dk_ = _empty(k.shape, k.dtype, dev)
    dv = _empty(v.shape, v.dtype, dev) if SRC_V in pb.codes else None
    dbias = None
    slots = min(batch, TABLE_GRAD_SLOTS) if bias_index is not None else 1
    if need_dbias and bias is not None:  # the table gradient is accumulated with atomics: starts at 0
        dbias = (torch.zeros((slots, *bias.shape), dtype=torch.float32, device=dev) if bias_index is not None
                 else _empty((batch, heads, nq, nk), torch.float32, dev))
    table_grad = dbias is not None and bias_index is not None
    if batch * heads * max(nq, nk) == 0:
        return dq.zero_(), dk_.zero_(), dv.zero_() if dv is not None else None, dbias.sum(0) if table_grad else dbias
    delta = _empty((batch, heads, nq), torch.float32, dev)
    dq_acc = _empty(q.shape, torch.float32, dev) if pb.codes[0] == SRC_Q else dq
    do_strides = _strides4(dout)
    with _on_device(q):
        block = 32 if triton_interpreting() else 64
        dtot = n["D1"] + n["D2"]
        _attention_bwd_preprocess_kernel[(triton.cdiv(nq, block), batch * heads)](
            out, dout, delta, out.stride(0), out.stride(1), out.stride(2), *do_strides,
            heads, nq, dtot, BLOCK_M=block, BLOCK_D=_block_dim(dtot))
        shared = (*pb.strides, *do_strides, heads, nq, nk, dk, n["D1"], n["D2"], pb.scale * LOG2E, pb.scale)
        # Never alias a live buffer here: the autotuner zeroes this argument (reset_to_zero).
        dbias_arg = dbias if dbias is not None else torch.empty(1, dtype=torch.float32, device=dev)
        dtable_stride = dbias.stride(1) if table_grad else 0
        routing = dict(P1=pb.codes[0], P2=pb.codes[1], **pb.constexprs)
        _launch(_attention_bwd_dkdv_kernel, _dkdv_tuned, "BLOCK_N", nk, batch * heads,
                q, k, *pb.parts, *pb.bias_ptrs, dout, lse, delta, dk_, dv if dv is not None else dk_, dq_acc,
                dbias_arg, *shared, dtable_stride, slots, NEED_DBIAS=dbias is not None, **routing)
        _launch(_attention_bwd_dq_kernel, _dq_tuned, "BLOCK_M", nq, batch * heads,
                q, k, *pb.parts, *pb.bias_ptrs, dout, lse, delta, dq, dq_acc, *shared, **routing)
    return dq, dk_, dv, dbias.sum(0) if table_grad else dbias


__all__ = ["attention_forward", "attention_backward", "MAX_HEAD_DIM", "VALUE_PARTS"]
