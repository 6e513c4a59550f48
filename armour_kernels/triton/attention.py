"""Flash-style softmax attention in Triton: one kernel family for every value source and bias form.

The maths is docs/attention.md's, the launcher contract docs/layouts.md's. Layout (B, N, H, D),
any strides. Forward: online softmax over key blocks, fp32 accumulation, the row log-sum-exp
saved. Backward (FlashAttention-2): delta = rowsum(dO∘O), then one kernel over key blocks (dK,
the value-path gradients Pᵀ·dO, the bias gradient) and one over query blocks (dQ).

The value matrix is up to two parts read in place, [part1 | part2] along the feature dim:

    value   part1  part2        the value-path gradient Pᵀ·dO of a part goes to
    "v"     v      -            v → dv
    "q"     q      -            q → written into the fp32 dQ buffer by the key-block kernel,
    "k"     k      -                 which the query-block kernel then adds its s·dS·K to
    "q+v"   q      v            k → added to dK in the key-block kernel (same rows j)
    "q+k"   q      k

so Armour ("q") never has a dV tensor, and the concat of "q+v" / "q+k" is never materialised.

Bias: none; dense, any shape that broadcasts to (B, H, Nq, Nk), read through stride-0 views;
or the LeViT table (H, R) gathered in-kernel as table[h, idx[i, j]].
Diagonal mask (docs/attention.md, `shared_qk_nodiag`): scores[i, i] = -inf unless the row has
no other finite key; which rows keep their diagonal is worked out on the host
(`_keep_diagonal`), so the forward and both backward kernels agree on one mask.

Fully masked rows (docs/numerics.md): a query row whose every score is -inf (through the bias)
has output 0 and contributes no gradient. The forward stores lse = +inf for such a row (not
-inf + log 0), so the backward's P = exp2(s − lse) is exp2(-inf) = 0 for it and nothing ever
computes -inf − (-inf); every other row's numbers are untouched.

Bias gradient (docs/attention.md, docs/levit.md), never materialised at (B, H, Nq, Nk) unless
the bias is that big:
  dense, one element per (b, h, i, j)     plain stores
  dense, broadcast over the batch/heads   relaxed fp32 atomics into the bias's own (B|1, H|1)
                                          planes (Nq / Nk broadcasts are summed after)
  LeViT table                             relaxed fp32 atomics into per-image-slot partial tables
With torch.use_deterministic_algorithms(True) both reductions are deterministic instead: each
key-block program owns a slot of the reduced gradient and adds its (b, h) members in a fixed
order (load, add, store; no atomics), the slots are summed by PyTorch, and the table is a fixed-
order segment sum of that reduced dense gradient (`_table_segment_sum_kernel`).

Grids: every kernel enumerates (row block, batch·head) as one int64 program index on grid axis
0 (`_grid.flat_grid`), so B·H is not limited by CUDA's 65535 on axes 1/2; offsets derived from
the batch / head index are 64-bit.

Dot precision: 16-bit inputs run native tensor-core dots with fp32 accumulation; fp32 inputs
follow torch.backends.cuda.matmul.allow_tf32 (TF32 when the user allowed it, else IEEE fp32).
"""
from __future__ import annotations

import enum
import weakref
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..backend import interpreting as triton_interpreting
from ..constants import MAX_HEAD_DIM, VALUE_PARTS, BiasKind, ValueSource
from . import _interpreter_compat  # noqa: F401  (NumPy 2.4 vs the Triton interpreter)
from ._constants import BIAS_DENSE, BIAS_TABLE, LN2, LOG2E, SRC_K, SRC_NONE, SRC_Q, SRC_V
from ._grid import flat_grid, flat_program_id
from ._tuning import ForcedConfigs, shortlist

# The LeViT table gradient is a scatter-add of B·Nq·Nk scores into H·R entries (R ≈ Nk): every
# entry takes ~B·Nq atomic adds. Images b go to partial tables b % TABLE_GRAD_SLOTS, summed after
# the kernel, so those adds contend on 32× as many addresses; the partials are only 32·H·R floats.
TABLE_GRAD_SLOTS = 32
# The deterministic bias gradient reduces the batch into slot planes (each owned by one column of
# programs, for parallelism): at most REDUCE_SLOTS of them, each summing at least
# IMAGES_PER_SLOT images (so the slots are at most an eighth of a (B, H, Nq, Nk) gradient), and
# at most REDUCE_SLOT_ELEMENTS fp32 values in all.
REDUCE_SLOTS = 32
IMAGES_PER_SLOT = 8
REDUCE_SLOT_ELEMENTS = 2 ** 24


class BiasGrad(enum.IntEnum):
    """How the key-block kernel writes the bias gradient (the DBIAS constexpr)."""

    NONE = 0
    STORE = 1          # dense, one gradient element per (b, h, i, j): plain stores
    ATOMIC = 2         # dense, reduced over b and/or h: relaxed atomics into the reduced planes
    ACCUMULATE = 3     # deterministic: a program owns a reduced plane slot and load-add-stores its members
    TABLE_ATOMIC = 4   # LeViT table: relaxed atomics into per-image-slot partial tables


# Never specialised on (do_not_specialize): the autotuning buckets, kernel arguments only so that
# the autotuner can key on them, and every launch scalar that changes with the batch size (B·H,
# the dK/dV kernel's units, members and table slots). Specialised, a batch of 1 or a 16-divisible
# batch would make them constexprs / divisibility hints and so a separate compile per batch size.
_BUCKETS = ["NQ_BUCKET", "NK_BUCKET"]
_FWD_FREE = _BUCKETS + ["BH"]
_DKDV_FREE = _BUCKETS + ["B", "UNITS", "MEMBERS", "dtable_slots"]
_DQ_FREE = _BUCKETS + ["BH"]

GRAD_STORE = tl.constexpr(int(BiasGrad.STORE))
GRAD_ATOMIC = tl.constexpr(int(BiasGrad.ATOMIC))
GRAD_ACCUMULATE = tl.constexpr(int(BiasGrad.ACCUMULATE))
GRAD_TABLE_ATOMIC = tl.constexpr(int(BiasGrad.TABLE_ATOMIC))


# ----------------------------------------------------------------------------- device helpers

@triton.jit
def _tile(base, offs_a, offs_b, stride_a, stride_b, lim_a, lim_b):
    """Load the (len(offs_a), len(offs_b)) tile base[a*stride_a + b*stride_b], zeros outside the limits."""
    ptrs = base + offs_a[:, None] * stride_a + offs_b[None, :] * stride_b
    return tl.load(ptrs, mask=(offs_a[:, None] < lim_a) & (offs_b[None, :] < lim_b), other=0.0)


@triton.jit
def _block_of(ROWS, BLOCK: tl.constexpr):
    """(unit, row block) of this program: the flat index runs over row blocks fastest, so the
    programs of one (b, h) are neighbours and share its K / V in L2. `unit` is int64."""
    blocks = tl.cdiv(ROWS, BLOCK)
    pid = flat_program_id()
    return pid // blocks, (pid % blocks).to(tl.int32)


@triton.jit
def _query_program(NQ, H, BLOCK_M: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_D1: tl.constexpr,
                   BLOCK_D2: tl.constexpr):
    """(bh, b, h, query rows, feature offsets) of a program of the forward / dQ grids; bh ≥ B·H
    marks a padding program (the kernel returns)."""
    bh, blk = _block_of(NQ, BLOCK_M)
    return (bh, bh // H, (bh % H).to(tl.int32), blk * BLOCK_M + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_DK),
            tl.arange(0, BLOCK_D1), tl.arange(0, BLOCK_D2))


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
    if BIAS == BIAS_DENSE:  # (B, H, Nq, Nk) through strides, 0 for broadcast dims
        ptrs = Bias + b * sbb + h * sbh + rows * sbm + cols * sbn
        s += tl.load(ptrs, mask=inside, other=0.0).to(tl.float32) * LOG2E
    if BIAS == BIAS_TABLE:  # LeViT: table (H, R) gathered through idx (Nq, Nk)
        idx = tl.load(BiasIdx + rows * sim + cols * sin, mask=inside, other=0)
        s += tl.load(Bias + h * sbh + idx * sbn, mask=inside, other=0.0).to(tl.float32) * LOG2E
    valid = cols < NK
    if MASK_DIAG:
        keep = tl.load(KeepDiag + b * sfb + h * sfh + rows, mask=rows < NQ, other=0)
        valid = valid & ((rows != cols) | (keep != 0))
    return tl.where(valid, s, float("-inf"))


# ----------------------------------------------------------------------------- forward

@triton.jit(do_not_specialize=_FWD_FREE)
def _attention_fwd_kernel(
        Q, K, V1, V2, Bias, BiasIdx, KeepDiag, Out, Lse,
        sqb, sqn, sqh, sqd, skb, skn, skh, skd,
        s1b, s1n, s1h, s1d, s2b, s2n, s2h, s2d,
        sbb, sbh, sbm, sbn, sim, sin, sfb, sfh,
        sob, son, soh,
        BH, H, NQ, NK, DQK, D1, D2, qk_scale, NQ_BUCKET, NK_BUCKET,
        BIAS: tl.constexpr, MASK_DIAG: tl.constexpr, HAS_P2: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr):
    bh, b, h, offs_m, offs_dk, offs_d1, offs_d2 = _query_program(NQ, H, BLOCK_M, BLOCK_DK, BLOCK_D1, BLOCK_D2)
    if bh >= BH:  # a padding program of a stacked grid
        return
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
    empty = l_i == 0.0  # every score -inf: output 0, lse +inf (module docstring)
    inv_l = 1.0 / tl.where(empty, 1.0, l_i)
    out_rows = Out + b * sob + h * soh + offs_m[:, None] * son
    tl.store(out_rows + offs_d1[None, :], (acc1 * inv_l[:, None]).to(Out.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d1[None, :] < D1))
    if HAS_P2:
        tl.store(out_rows + D1 + offs_d2[None, :], (acc2 * inv_l[:, None]).to(Out.dtype.element_ty),
                 mask=row_ok[:, None] & (offs_d2[None, :] < D2))
    lse = tl.where(empty, float("inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * LN2)
    tl.store(Lse + bh * NQ + offs_m, lse, mask=row_ok)


# ----------------------------------------------------------------------------- backward

@triton.jit(do_not_specialize=["BH"])
def _attention_bwd_preprocess_kernel(Out, DO, Delta, sob, son, soh, sdb, sdn, sdh, sdd,
                                     BH, H, NQ, DTOT, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta[b, h, i] = Σ_d dO[b, i, h, d]·O[b, i, h, d] (the rowsum(dO∘O) of dS = P∘(dP − delta))."""
    bh, b, h, offs_m, offs_d, _, _ = _query_program(NQ, H, BLOCK_M, BLOCK_D, BLOCK_D, BLOCK_D)
    if bh >= BH:
        return
    o = _tile(Out + b * sob + h * soh, offs_m, offs_d, son, 1, NQ, DTOT).to(tl.float32)
    do = _tile(DO + b * sdb + h * sdh, offs_m, offs_d, sdn, sdd, NQ, DTOT).to(tl.float32)
    tl.store(Delta + bh * NQ + offs_m, tl.sum(o * do, 1), mask=offs_m < NQ)


@triton.jit
def _dkdv_head(Q, K, V1, V2, Bias, BiasIdx, KeepDiag, DO, Lse, Delta, DK, DV, DQAcc, DBias, GradBase,
               sqb, sqn, sqh, sqd, skb, skn, skh, skd,
               s1b, s1n, s1h, s1d, s2b, s2n, s2h, s2d,
               sbb, sbh, sbm, sbn, sim, sin, sfb, sfh,
               sdb, sdn, sdh, sdd,
               b, h, offs_n, H, NQ, NK, DQK, D1, D2, qk_scale, sm_scale, dtable_stride, dtable_slots,
               P1: tl.constexpr, P2: tl.constexpr,
               BIAS: tl.constexpr, MASK_DIAG: tl.constexpr, DBIAS: tl.constexpr, PREC: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_DK: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr):
    """The key-block kernel's work for one (b, h); GradBase: this program's plane of the dense
    bias gradient (STORE / ATOMIC / ACCUMULATE)."""
    bh = b * H + h
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_d1 = tl.arange(0, BLOCK_D1)
    offs_d2 = tl.arange(0, BLOCK_D2)
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
    if P2 != SRC_NONE:
        v2 = _tile(V2 + b * s2b + h * s2h, offs_n, offs_d2, s2n, s2d, NK, D2)
    for start_m in range(0, NQ, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < NQ
        qT = _tile(Q, offs_dk, offs_m, sqd, sqn, DQK, NQ)
        sT = _scores(k, qT, offs_m[None, :], offs_n[:, None], b, h, NQ, NK, qk_scale, Bias, BiasIdx, KeepDiag,
                     sbb, sbh, sbm, sbn, sim, sin, sfb, sfh, BIAS, MASK_DIAG, PREC)
        # lse = +inf for a fully masked row: exp2(-inf − inf) = 0, so the row adds nothing.
        lse2 = tl.load(Lse + bh * NQ + offs_m, mask=row_ok, other=0.0) * LOG2E
        delta = tl.load(Delta + bh * NQ + offs_m, mask=row_ok, other=0.0)
        pT = tl.where(row_ok[None, :], tl.exp2(sT - lse2[None, :]), 0.0)
        do1 = _tile(DO, offs_m, offs_d1, sdn, sdd, NQ, D1)
        dv1 += tl.dot(pT.to(do1.dtype), do1, input_precision=PREC)
        dpT = tl.dot(v1, tl.trans(do1), input_precision=PREC)
        if P2 != SRC_NONE:
            do2 = _tile(DO + D1 * sdd, offs_m, offs_d2, sdn, sdd, NQ, D2)
            dv2 += tl.dot(pT.to(do2.dtype), do2, input_precision=PREC)
            dpT += tl.dot(v2, tl.trans(do2), input_precision=PREC)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=PREC)
        inside = row_ok[None, :] & (offs_n[:, None] < NK)
        grad_ptrs = GradBase + offs_m[None, :] * NK + offs_n[:, None]  # (Nq, Nk) plane, contiguous
        if DBIAS == GRAD_STORE:
            tl.store(grad_ptrs, dsT, mask=inside)
        if DBIAS == GRAD_ATOMIC:
            tl.atomic_add(grad_ptrs, dsT, mask=inside, sem="relaxed")
        if DBIAS == GRAD_ACCUMULATE:  # this program alone owns the plane tile: a plain read-modify-write
            tl.store(grad_ptrs, tl.load(grad_ptrs, mask=inside, other=0.0) + dsT, mask=inside)
        if DBIAS == GRAD_TABLE_ATOMIC:  # this image's slot of the (slots, H, R) partial tables
            idx = tl.load(BiasIdx + offs_m[None, :] * sim + offs_n[:, None] * sin, mask=inside, other=0)
            slot = (b % dtable_slots) * H + h
            tl.atomic_add(DBias + slot * dtable_stride + idx, dsT, mask=inside, sem="relaxed")

    # Route the value-path gradients to the tensor each part was read from.
    dk = dk * sm_scale
    if P1 == SRC_K:  # "k"
        dk += dv1
    if P2 == SRC_K:  # "q+k"
        dk += dv2
    key_rows = (b * NK + offs_n[:, None]) * H + h  # contiguous (B, Nk, H, D) outputs
    n_ok = offs_n[:, None] < NK
    tl.store(DK + key_rows * DQK + offs_dk[None, :], dk.to(DK.dtype.element_ty),
             mask=n_ok & (offs_dk[None, :] < DQK))
    if P1 == SRC_V:  # "v"
        tl.store(DV + key_rows * D1 + offs_d1[None, :], dv1.to(DV.dtype.element_ty),
                 mask=n_ok & (offs_d1[None, :] < D1))
    if P2 == SRC_V:  # "q+v"
        tl.store(DV + key_rows * D2 + offs_d2[None, :], dv2.to(DV.dtype.element_ty),
                 mask=n_ok & (offs_d2[None, :] < D2))
    if P1 == SRC_Q:  # q is (the first part of) the value: its Pᵀ·dO, for the dQ kernel to add to
        tl.store(DQAcc + key_rows * DQK + offs_dk[None, :], dv1, mask=n_ok & (offs_dk[None, :] < DQK))


@triton.jit(do_not_specialize=_DKDV_FREE)
def _attention_bwd_dkdv_kernel(
        Q, K, V1, V2, Bias, BiasIdx, KeepDiag, DO, Lse, Delta, DK, DV, DQAcc, DBias,
        sqb, sqn, sqh, sqd, skb, skn, skh, skd,
        s1b, s1n, s1h, s1d, s2b, s2n, s2h, s2d,
        sbb, sbh, sbm, sbn, sim, sin, sfb, sfh,
        sdb, sdn, sdh, sdd,
        B, H, NQ, NK, DQK, D1, D2, qk_scale, sm_scale, NQ_BUCKET, NK_BUCKET,
        UNITS, HO, MEMBERS, MH, gb, gh, dtable_stride, dtable_slots,
        P1: tl.constexpr, P2: tl.constexpr,
        BIAS: tl.constexpr, MASK_DIAG: tl.constexpr, DBIAS: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr):
    """One key block: dK = s·dSᵀ·Q, the value-path gradients Pᵀ·dO of both parts, the bias gradient.

    A program's unit is one (b, h) (HO = H), except with DBIAS = ACCUMULATE (deterministic
    reduction): there it is one (slot, output head) plane of the reduced gradient, and the program
    runs its MEMBERS (b, h) one after another in a fixed order: b = slot + t·(slots), h = head + hh.
    """
    unit, blk = _block_of(NK, BLOCK_N)
    if unit >= UNITS:
        return
    offs_n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    # One (b, h) per program (HO = H), or, for ACCUMULATE, the members of one reduced plane in a
    # fixed order. MEMBERS is not specialised (it follows the batch), and a loop of unknown length
    # around the whole body costs registers, so outside ACCUMULATE the loop is a constant 1.
    slot = unit // HO
    head = (unit % HO).to(tl.int32)
    if DBIAS == GRAD_ACCUMULATE:
        count = MEMBERS
    else:
        count = 1
    for member in range(0, count):
        b = slot + (member // MH) * (UNITS // HO)
        h = head + (member % MH).to(tl.int32)
        if b < B:
            _dkdv_head(Q, K, V1, V2, Bias, BiasIdx, KeepDiag, DO, Lse, Delta, DK, DV, DQAcc, DBias,
                       DBias + slot * gb + head * gh,
                       sqb, sqn, sqh, sqd, skb, skn, skh, skd, s1b, s1n, s1h, s1d, s2b, s2n, s2h, s2d,
                       sbb, sbh, sbm, sbn, sim, sin, sfb, sfh, sdb, sdn, sdh, sdd,
                       b, h, offs_n, H, NQ, NK, DQK, D1, D2, qk_scale, sm_scale, dtable_stride, dtable_slots,
                       P1, P2, BIAS, MASK_DIAG, DBIAS, PREC, BLOCK_M, BLOCK_N, BLOCK_DK, BLOCK_D1, BLOCK_D2)
        if DBIAS == GRAD_ACCUMULATE:
            tl.debug_barrier()  # the next member reads back what this one stored


@triton.jit(do_not_specialize=_DQ_FREE)
def _attention_bwd_dq_kernel(
        Q, K, V1, V2, Bias, BiasIdx, KeepDiag, DO, Lse, Delta, DQ, DQAcc,
        sqb, sqn, sqh, sqd, skb, skn, skh, skd,
        s1b, s1n, s1h, s1d, s2b, s2n, s2h, s2d,
        sbb, sbh, sbm, sbn, sim, sin, sfb, sfh,
        sdb, sdn, sdh, sdd,
        BH, H, NQ, NK, DQK, D1, D2, qk_scale, sm_scale, NQ_BUCKET, NK_BUCKET,
        P1: tl.constexpr, P2: tl.constexpr,
        BIAS: tl.constexpr, MASK_DIAG: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr):
    """One query block: dQ = s·dS·K (+ the value-path part the key-block kernel left in DQAcc)."""
    bh, b, h, offs_m, offs_dk, offs_d1, offs_d2 = _query_program(NQ, H, BLOCK_M, BLOCK_DK, BLOCK_D1, BLOCK_D2)
    if bh >= BH:
        return
    row_ok = offs_m < NQ
    K += b * skb + h * skh
    V1 += b * s1b + h * s1h
    V2 += b * s2b + h * s2h

    q = _tile(Q + b * sqb + h * sqh, offs_m, offs_dk, sqn, sqd, NQ, DQK)
    do1 = _tile(DO + b * sdb + h * sdh, offs_m, offs_d1, sdn, sdd, NQ, D1)
    if P2 != SRC_NONE:
        do2 = _tile(DO + b * sdb + h * sdh + D1 * sdd, offs_m, offs_d2, sdn, sdd, NQ, D2)
    lse2 = tl.load(Lse + bh * NQ + offs_m, mask=row_ok, other=0.0) * LOG2E  # +inf: a fully masked row
    delta = tl.load(Delta + bh * NQ + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_DK), tl.float32)
    for start_n in range(0, NK, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _tile(K, offs_n, offs_dk, skn, skd, NK, DQK)
        s = _scores(q, tl.trans(k), offs_m[:, None], offs_n[None, :], b, h, NQ, NK, qk_scale, Bias, BiasIdx, KeepDiag,
                    sbb, sbh, sbm, sbn, sim, sin, sfb, sfh, BIAS, MASK_DIAG, PREC)
        p = tl.where(row_ok[:, None], tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do1, _tile(V1, offs_d1, offs_n, s1d, s1n, D1, NK), input_precision=PREC)
        if P2 != SRC_NONE:
            dp += tl.dot(do2, _tile(V2, offs_d2, offs_n, s2d, s2n, D2, NK), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)

    dq = dq * sm_scale
    rows = (b * NQ + offs_m[:, None]) * H + h  # contiguous (B, Nq, H, Dk)
    mask = row_ok[:, None] & (offs_dk[None, :] < DQK)
    if P1 == SRC_Q:
        dq += tl.load(DQAcc + rows * DQK + offs_dk[None, :], mask=mask, other=0.0)
    tl.store(DQ + rows * DQK + offs_dk[None, :], dq.to(DQ.dtype.element_ty), mask=mask)


@triton.jit
def _table_segment_sum_kernel(G, Perm, Starts, Out, H, R, NQK, BLOCK_R: tl.constexpr):
    """Deterministic LeViT table gradient: Out[h, r] = Σ G[h, ij] over the (i, j) with index r,
    added in one fixed order (Perm: the flat (i, j) sorted stably by index; Starts: each entry's
    first position in Perm, R + 1 of them). The loop runs to the longest segment of this block,
    read here, so the host never reads a device value (no sync)."""
    h, blk = _block_of(R, BLOCK_R)
    if h >= H:
        return
    r = blk * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = r < R
    start = tl.load(Starts + r, mask=ok, other=0)
    end = tl.load(Starts + r + 1, mask=ok, other=0)
    acc = tl.zeros((BLOCK_R,), tl.float32)
    for t in range(0, tl.max(end - start, 0)):
        live = start + t < end
        ij = tl.load(Perm + start + t, mask=live, other=0)
        acc += tl.load(G + h * NQK + ij, mask=live, other=0.0)
    tl.store(Out + h * R + r, acc, mask=ok)


# ----------------------------------------------------------------------------- block sizes

def _block_dim(d: int) -> int:
    """Feature dims are padded (with masks) to a power of two, at least 16 for tl.dot."""
    return max(16, triton.next_power_of_2(d))


SHARED_MEMORY_BYTES = 232448  # what one program may use on sm_90 (227 KiB): the offline default
REGISTER_BUDGET = 192         # estimated live fp32 values per thread (`_estimates`) before ptxas spills


def shared_memory_limit(device=None) -> int:
    """Shared memory one program may use on `device`'s GPU (the opt-in limit, read once per
    device); SHARED_MEMORY_BYTES (the H100's) without a GPU, e.g. when compiling offline."""
    if device is None or getattr(device, "type", "cpu") != "cuda" or not torch.cuda.is_available():
        return SHARED_MEMORY_BYTES
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SHARED_BY_DEVICE:
        props = torch.cuda.get_device_properties(index)
        _SHARED_BY_DEVICE[index] = int(getattr(props, "shared_memory_per_block_optin", SHARED_MEMORY_BYTES))
    return _SHARED_BY_DEVICE[index]


_SHARED_BY_DEVICE: dict[int, int] = {}


def _estimates(kernel, block_m, block_n, warps, stages, dk, dv, bias, element):
    """(shared bytes, live fp32 values per thread) of one config: the model behind `_pruner`.

    Shared memory: the streamed operand tiles, one buffer per pipeline stage, plus the resident
    tile (and a bias / index tile per stage); it reproduces the compiled figures exactly without
    a bias and over-estimates with one. Registers: the fp32 accumulators of the resident rows plus
    the score-sized tiles (scores, probabilities, dS; the bias and its index), 1.5 values per
    element. Both fitted to the sm_90 compile report (bench/results/offline-sm90/), as are the
    limits above."""
    extra = stages * block_m * block_n * 2 if bias else 0
    if kernel == "dkdv":  # key-major: BLOCK_N keys resident, query blocks streamed
        shared = element * (stages * block_m * (dk + dv) + block_n * (dk + dv)) + extra
        resident, streamed, accumulated = block_n, block_m, dk + dv
    else:
        resident_width = dk if kernel == "fwd" else dk + dv
        shared = element * (stages * block_n * (dk + dv) + block_m * resident_width) + extra
        resident, streamed, accumulated = block_m, block_n, dv if kernel == "fwd" else dk
    live = (resident * accumulated + 1.5 * (1 + bias) * resident * streamed) / (32 * warps)
    return shared, live


def _pruner(kernel):
    """The configs of one kernel that fit: the SM's shared memory (read from the device)
    and whose estimated registers fit, and, with a bias, no 8-warp config whose MMA rows are fewer
    than 64 (it falls back from wgmma to mma.sync and spills the bias tiles)."""
    def prune(configs, named_args, **kwargs):
        meta = {**named_args, **kwargs}
        has_second = meta.get("HAS_P2", False) or meta.get("P2", 0) != 0
        dk, dv = meta["BLOCK_DK"], meta["BLOCK_D1"] + (meta["BLOCK_D2"] if has_second else 0)
        bias = int(meta["BIAS"])
        element = meta["Q"].element_size()
        limit = shared_memory_limit(meta["Q"].device)
        kept = []
        for config in configs:
            m, n, warps = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps
            shared, live = _estimates(kernel, m, n, warps, config.num_stages, dk, dv, bias, element)
            mma_rows = n if kernel == "dkdv" else m
            if shared <= limit and live <= REGISTER_BUDGET and not (warps == 8 and mma_rows < 64 and bias):
                kept.append(config)
        return kept or configs[-1:]
    return prune


# (BLOCK_M, BLOCK_N, num_warps, num_stages), in order of preference. Derived from the sm_90 compile
# report (`armour-bench cubin`, bench/results/offline-sm90/), compiled with the launch
# specialisation a real launch gets: every entry is spill-free with wgmma at the DeiT / LeViT
# shapes (head dims 16–64) or at d = 128, except the mma.sync fallbacks at the end; the 128×128
# tiles fit only without a bias (`_pruner` drops what does not fit a given problem). Left out
# after the report: fwd 128×64 on 4 warps and dK/dV 128×32 (spill with a bias), dQ and dK/dV
# 32×128 on 4 warps and dK/dV 128×128 (spill everywhere).
# The dK/dV kernel's tiles are key-major, so there BLOCK_N is the wgmma M dimension.
_FWD_CONFIGS = [(128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 3), (128, 128, 8, 2), (64, 128, 4, 3),
                (128, 32, 4, 3), (64, 32, 4, 2), (32, 32, 4, 2)]
_DKDV_CONFIGS = [(64, 64, 8, 3), (64, 64, 8, 2), (64, 128, 8, 3), (32, 128, 8, 3), (32, 64, 4, 3), (16, 64, 4, 3),
                 (64, 64, 4, 3), (32, 32, 4, 2), (64, 32, 8, 3)]
_DQ_CONFIGS = [(64, 64, 8, 3), (128, 64, 8, 2), (64, 128, 8, 2), (128, 128, 8, 2), (128, 32, 8, 3), (64, 64, 4, 3),
               (64, 32, 8, 3), (16, 64, 4, 3), (32, 32, 4, 2)]


def _configs(shapes):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


# Autotuning keys: sequence lengths by power-of-two bucket (a retune per bucket, not per length),
# the padded head dims and every constexpr that changes the code. Not the batch: a new batch size
# neither retunes nor recompiles (its scalars are not specialised, `_FWD_FREE` …).
_KEY = ["NQ_BUCKET", "NK_BUCKET", "BLOCK_DK", "BLOCK_D1", "BLOCK_D2", "BIAS", "MASK_DIAG", "PREC"]
FWD_KEY = _KEY + ["HAS_P2"]
DKDV_KEY = _KEY + ["P1", "P2", "DBIAS"]
DQ_KEY = _KEY + ["P1", "P2"]
# Which block size tiles the rows a program keeps resident, and which the streamed ones.
_TILES = {"fwd": ("BLOCK_M", "BLOCK_N", "NQ_BUCKET", "NK_BUCKET"),
          "dkdv": ("BLOCK_N", "BLOCK_M", "NK_BUCKET", "NQ_BUCKET"),
          "dq": ("BLOCK_M", "BLOCK_N", "NQ_BUCKET", "NK_BUCKET")}


def _shortlist(kernel):
    """The autotuner's early prune: the fitting configs (`_pruner`) whose tiles are not wider than
    the (padded) sequence they tile (a 128-row tile over LeViT's 16 or 49 queries only computes
    padding), the first `_tuning.SHORTLIST` of them. Never empty: the smallest config is the fallback."""
    fits = _pruner(kernel)
    resident, streamed, rows, cols = _TILES[kernel]

    def prune(configs, named_args, **kwargs):
        meta = {**named_args, **kwargs}
        kept = fits(configs, named_args, **kwargs)
        narrow = [c for c in kept if c.kwargs[resident] <= max(32, meta[rows])
                  and c.kwargs[streamed] <= max(32, meta[cols])]
        kept = narrow or kept
        if meta.get("PREC") == "ieee":
            # IEEE fp32 dots are FMA loops, not tensor-core MMAs: every list entry above 32×32 spills
            # registers on sm_90 (bench/results/offline-sm90/, the "fp32 ieee" rows), so the
            # smallest tiles first.
            kept = sorted(kept, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])
        return shortlist(kept)
    return prune


def _configs(shapes):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


def _tuned(kernel, name, configs, key, **kwargs):
    return triton.autotune(configs, key=key, prune_configs_by={"early_config_prune": _shortlist(name)},
                           **kwargs)(kernel)


_fwd_tuned = _tuned(_attention_fwd_kernel, "fwd", _configs(_FWD_CONFIGS), FWD_KEY)
_dkdv_tuned = _tuned(_attention_bwd_dkdv_kernel, "dkdv", _configs(_DKDV_CONFIGS), DKDV_KEY, reset_to_zero=["DBias"])
_dq_tuned = _tuned(_attention_bwd_dq_kernel, "dq", _configs(_DQ_CONFIGS), DQ_KEY)
TUNED = {"fwd": _fwd_tuned, "dkdv": _dkdv_tuned, "dq": _dq_tuned}

# Under the interpreter (CPU tensors): one small fixed tile, so tests stay fast.
_INTERPRETER_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32}


def bucket(n: int) -> int:
    """The autotuning bucket of a size: the next power of two."""
    return triton.next_power_of_2(max(1, int(n)))


FORCED = ForcedConfigs(TUNED)


def forced_configs(**configs):
    """Inside (a context manager), each named kernel ("fwd", "dkdv", "dq") launches with the given
    triton.Config instead of autotuning (`_tuning.ForcedConfigs`)."""
    return FORCED.use(**configs)


def _launch(kernel, tuned, grid_over, grid_rows, units, *args, **meta):
    """Autotuned on CUDA; one fixed small configuration in the interpreter; the forced config
    (`forced_configs`) on both.

    `grid_over` names the block size that tiles the `grid_rows` rows; the flat grid runs over
    (row block, unit) with `units` units (usually B·H)."""
    if units == 0 or grid_rows == 0:
        return
    forced = FORCED.get(next(name for name, t in TUNED.items() if t is tuned))
    if forced is not None:
        blocks = triton.cdiv(grid_rows, forced.kwargs[grid_over])  # (DBias is allocated zeroed)
        extra = {} if triton_interpreting() else dict(num_warps=forced.num_warps, num_stages=forced.num_stages)
        kernel[flat_grid(blocks * units)](*args, **meta, **forced.kwargs, **extra)
    elif triton_interpreting():
        blocks = triton.cdiv(grid_rows, _INTERPRETER_BLOCKS[grid_over])
        kernel[flat_grid(blocks * units)](*args, **meta, **_INTERPRETER_BLOCKS)
    else:
        tuned[lambda m: flat_grid(triton.cdiv(grid_rows, m[grid_over]) * units)](*args, **meta)


# ----------------------------------------------------------------------------- host side

def _empty(shape, dtype, device):
    """Every output buffer comes from here (tests pre-fill it with NaN to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _zeros(shape, dtype, device):
    """Every accumulation buffer comes from here (tests measure what the launcher allocates)."""
    return torch.zeros(shape, dtype=dtype, device=device)


def dot_precision(dtype) -> str | None:
    """tl.dot input precision for inputs of `dtype`: native for 16-bit; fp32 follows
    torch.backends.cuda.matmul.allow_tf32 (TF32 when the user allowed it, else IEEE)."""
    if dtype != torch.float32:
        return None
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _value_parts(q, k, v, value):
    if value not in VALUE_PARTS:
        raise ValueError(f"value must be one of {tuple(VALUE_PARTS)}, got {value!r}")
    codes = VALUE_PARTS[value]
    source = {ValueSource.V: v, ValueSource.Q: q, ValueSource.K: k}
    if ValueSource.V in codes and v is None:
        raise ValueError(f"value={value!r} needs v")
    parts = [source[c] if c != ValueSource.NONE else None for c in codes]
    return tuple(int(c) for c in codes), parts


def _as_4d(bias):
    """A dense bias as a 4-d view (leading broadcast dims of size 1)."""
    if bias.dim() > 4:
        raise ValueError(f"a dense bias has at most 4 dims, got shape {tuple(bias.shape)}")
    return bias[(None,) * (4 - bias.dim())]


def _keep_diagonal(q, k, bias, bias_index):
    """(B, H, Nq) int8: rows whose diagonal survives the mask because no other key is finite."""
    batch, nq, heads, _ = q.shape
    nk = k.shape[1]
    rows = torch.arange(nq, device=q.device)
    if bias is None:  # scores are finite: only a lone key (Nk == 1) leaves row 0 nothing else
        keep = (rows < nk) & (nk == 1)
        return keep.to(torch.int8).expand(batch, heads, nq)
    dense = bias[:, bias_index] if bias_index is not None else _as_4d(bias)
    off_diag = ~torch.eye(nq, nk, dtype=torch.bool, device=q.device)
    keep = ~(torch.isfinite(dense) & off_diag).any(-1) & (rows < nk)
    return keep.to(torch.int8).expand(batch, heads, nq)


def _strides4(t):
    return (t.stride(0), t.stride(1), t.stride(2), t.stride(3))


# ----------------------------------------------------------------------------- the LeViT index

def _compact_index(bias_index, entries: int):
    """The table index in the narrowest integer type that holds every value of [0, entries).

    Chosen from the table width alone: the op layer guarantees the values lie in [0, R), so no
    cast can wrap (int16 only for R ≤ 32767). Why narrow at all: every program reads the index
    tile of its scores, so one call loads B·H·Nq·Nk index entries (all the same Nq·Nk, from L2):
    at LeViT-128S's first stage, batch 2048, int64 would be 2.5 GB of L2 reads per attention
    call against 0.2 GB of q, k, v (0.4 GB as the programs read them). int16 is a quarter of
    that; the table itself (H·R values) stays in L1.
    """
    if entries <= torch.iinfo(torch.int16).max:
        return bias_index.to(torch.int16)
    if entries <= torch.iinfo(torch.int32).max:
        return bias_index.to(torch.int32)
    return bias_index.to(torch.int64)


@dataclass
class _IndexEntry:
    """What the launchers derive from one LeViT index tensor (at one version of its contents)."""
    ref: weakref.ref
    version: int
    entries: int
    narrow: torch.Tensor
    segments: tuple | None = None  # (perm int32, starts int32 (R + 1)): the deterministic gradient's order


_INDEX_CACHE: dict[int, _IndexEntry] = {}
_INDEX_CACHE_SIZE = 64  # index tensors remembered (a LeViT has one per attention block)


def _index_entry(bias_index, entries: int) -> _IndexEntry:
    """The narrowed index (and lazily its segments), cached per (tensor, version): the forward and
    the backward of one step, and every later step until the buffer changes, share one cast."""
    try:
        version = bias_index._version
    except RuntimeError:  # an inference tensor has no version counter: nothing safe to cache on
        return _IndexEntry(None, -1, entries, _compact_index(bias_index, entries))
    hit = _INDEX_CACHE.get(id(bias_index))
    if hit is not None and hit.ref() is bias_index and hit.version == version and hit.entries == entries:
        return hit
    entry = _IndexEntry(weakref.ref(bias_index), version, entries, _compact_index(bias_index, entries))
    if len(_INDEX_CACHE) >= _INDEX_CACHE_SIZE:
        _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
    _INDEX_CACHE[id(bias_index)] = entry
    return entry


def _segments(entry: _IndexEntry, bias_index):
    """(perm, starts) of the index: the fixed summation order of the deterministic table gradient."""
    if entry.segments is None:
        flat = bias_index.reshape(-1).to(torch.int64)
        ordered, perm = torch.sort(flat, stable=True)
        starts = torch.searchsorted(ordered, torch.arange(entry.entries + 1, device=flat.device))
        entry.segments = (perm.to(torch.int32), starts.to(torch.int32))
    return entry.segments


# ----------------------------------------------------------------------------- problems

@dataclass
class _Problem:
    """What every launch of one attention call shares: the value parts, bias form, sizes, strides."""
    codes: tuple          # (part1, part2) sources, ValueSource codes
    parts: tuple          # the tensors the value parts are read from (part2 = part1 when absent)
    scale: float
    bias_ptrs: tuple      # bias (dense or table), index, keep-diagonal flags (q as a placeholder)
    strides: tuple        # q, k, part1, part2 (4 each), then bias (4), index (2), keep-diagonal (2)
    sizes: dict           # H, NQ, NK, D1, D2
    constexprs: dict
    buckets: dict         # the autotuning buckets NQ_BUCKET, NK_BUCKET
    index: _IndexEntry | None


def _bias_args(q, k, bias, bias_index, mask_diagonal):
    """Pointers, strides and constexpr form of the bias, its index and the keep-diagonal flags."""
    batch, nq, heads, _ = q.shape
    keep = _keep_diagonal(q, k, bias, bias_index) if mask_diagonal else None
    entry = None
    if bias is None:
        form, sb, si = BiasKind.NONE, (0, 0, 0, 0), (0, 0)
    elif bias_index is not None:
        entry = _index_entry(bias_index, bias.shape[1])
        bias_index = entry.narrow
        form, sb, si = BiasKind.TABLE, (0, bias.stride(0), 0, bias.stride(1)), bias_index.stride()
    else:
        bias = _as_4d(bias).expand(batch, heads, nq, k.shape[1])  # stride 0 on the broadcast dims
        form, sb, si = BiasKind.DENSE, _strides4(bias), (0, 0)
    sf = (keep.stride(0), keep.stride(1)) if keep is not None else (0, 0)
    ptrs = tuple(t if t is not None else q for t in (bias, bias_index, keep))
    return int(form), ptrs, (*sb, *si, *sf), entry


def _problem(q, k, v, bias, bias_index, value, scale, mask_diagonal) -> _Problem:
    if q.shape[-1] > MAX_HEAD_DIM or (v is not None and v.shape[-1] > MAX_HEAD_DIM):
        raise ValueError(f"head dims up to {MAX_HEAD_DIM} are supported, got q {q.shape[-1]}"
                         + (f", v {v.shape[-1]}" if v is not None else ""))
    codes, (p1, p2) = _value_parts(q, k, v, value)
    if ValueSource.Q in codes and q.shape[1] != k.shape[1]:
        raise ValueError(f"value={value!r} needs Nq == Nk, got {q.shape[1]} and {k.shape[1]}")
    p2 = p2 if p2 is not None else p1
    d1, d2 = p1.shape[-1], (p2.shape[-1] if codes[1] != ValueSource.NONE else 0)
    form, bias_ptrs, bias_strides, entry = _bias_args(q, k, bias, bias_index, mask_diagonal)
    batch, nq, heads, _ = q.shape
    constexprs = dict(BIAS=form, MASK_DIAG=bool(mask_diagonal), PREC=dot_precision(q.dtype),
                      BLOCK_DK=_block_dim(q.shape[-1]), BLOCK_D1=_block_dim(d1), BLOCK_D2=_block_dim(d2))
    return _Problem(codes=codes, parts=(p1, p2), scale=q.shape[-1] ** -0.5 if scale is None else float(scale),
                    bias_ptrs=bias_ptrs,
                    strides=(*_strides4(q), *_strides4(k), *_strides4(p1), *_strides4(p2), *bias_strides),
                    sizes=dict(H=heads, NQ=nq, NK=k.shape[1], D1=d1, D2=d2), constexprs=constexprs,
                    buckets=dict(NQ_BUCKET=bucket(nq), NK_BUCKET=bucket(k.shape[1])),
                    index=entry)


def _on_device(t):
    return torch.cuda.device(t.device) if t.is_cuda else nullcontext()


def attention_forward(q, k, v, bias, bias_index, *, value, scale, mask_diagonal):
    """softmax(scale·q·kᵀ + bias)·value → (out (B, Nq, H, Dv_total) contiguous, lse (B, H, Nq) fp32).

    lse is +inf for a fully masked row (whose out is 0). A dense bias may have any shape that
    broadcasts to (B, H, Nq, Nk); bias_index values must lie in [0, R) (the op layer checks).
    """
    pb = _problem(q, k, v, bias, bias_index, value, scale, mask_diagonal)
    batch, nq, heads, dk = q.shape
    n = pb.sizes
    out = _empty((batch, nq, heads, n["D1"] + n["D2"]), q.dtype, q.device)
    lse = _empty((batch, heads, nq), torch.float32, q.device)
    with _on_device(q):
        _launch(_attention_fwd_kernel, _fwd_tuned, "BLOCK_M", nq, batch * heads,
                q, k, *pb.parts, *pb.bias_ptrs, out, lse, *pb.strides,
                out.stride(0), out.stride(1), out.stride(2),
                batch * heads, heads, nq, n["NK"], dk, n["D1"], n["D2"], pb.scale * LOG2E.value, *pb.buckets.values(),
                HAS_P2=pb.codes[1] != ValueSource.NONE, **pb.constexprs)
    return out, lse


@dataclass
class _BiasGradPlan:
    """Where and how the key-block kernel writes the bias gradient, and how the host finishes it."""
    mode: BiasGrad
    buffer: torch.Tensor  # what the kernel writes (DBias)
    units: int            # programs per key block
    ho: int               # heads per slot: H, or the reduced planes' heads (ACCUMULATE)
    members: int = 1      # (b, h) per program (ACCUMULATE)
    mh: int = 1           # heads per program (ACCUMULATE)
    gb: int = 0           # gradient plane strides: batch (or slot), head
    gh: int = 0
    table_stride: int = 0
    table_slots: int = 1


def _reduce_slots(batch, plane_elements):
    return max(1, min(batch // IMAGES_PER_SLOT, REDUCE_SLOTS, REDUCE_SLOT_ELEMENTS // max(1, plane_elements)))


def _bias_grad_plan(q, k, bias, bias_index, need_dbias) -> _BiasGradPlan:
    batch, nq, heads, _ = q.shape
    nk, dev = k.shape[1], q.device
    units = batch * heads
    if not need_dbias or bias is None:
        return _BiasGradPlan(BiasGrad.NONE, torch.empty(1, dtype=torch.float32, device=dev), units, heads)
    deterministic = torch.are_deterministic_algorithms_enabled()
    plane = nq * nk
    if bias_index is not None:
        if not deterministic:
            slots = min(batch, TABLE_GRAD_SLOTS)
            buffer = _zeros((slots, *bias.shape), torch.float32, dev)
            return _BiasGradPlan(BiasGrad.TABLE_ATOMIC, buffer, units, heads, table_stride=buffer.stride(1),
                                 table_slots=slots)
        reduce_b, reduce_h = batch > 1, False  # the reduced dense gradient (1, H, Nq, Nk), then a segment sum
    else:
        b4, h4 = _as_4d(bias).shape[:2]
        reduce_b, reduce_h = b4 == 1 and batch > 1, h4 == 1 and heads > 1
        if not (reduce_b or reduce_h):
            buffer = _empty((batch if b4 > 1 else 1, heads if h4 > 1 else 1, nq, nk), torch.float32, dev)
            return _BiasGradPlan(BiasGrad.STORE, buffer, units, heads, gb=buffer.stride(0) if batch > 1 else 0,
                                 gh=buffer.stride(1) if heads > 1 else 0)
    ho = 1 if reduce_h else heads
    if not deterministic:
        buffer = _zeros((1 if reduce_b else batch, ho, nq, nk), torch.float32, dev)
        return _BiasGradPlan(BiasGrad.ATOMIC, buffer, units, heads, gb=0 if reduce_b else ho * plane,
                             gh=0 if reduce_h else plane)
    slots = _reduce_slots(batch, ho * plane) if reduce_b else batch
    buffer = _zeros((slots, ho, nq, nk), torch.float32, dev)
    mh = heads if reduce_h else 1
    return _BiasGradPlan(BiasGrad.ACCUMULATE, buffer, slots * ho, ho, members=triton.cdiv(batch, slots) * mh,
                         mh=mh, gb=ho * plane, gh=0 if reduce_h else plane)


def _finish_bias_grad(plan: _BiasGradPlan, pb: _Problem, bias, bias_index):
    """The kernel's buffer → the gradient in the bias's own shape (fp32)."""
    if plan.mode == BiasGrad.NONE:
        return None
    if plan.mode == BiasGrad.TABLE_ATOMIC:
        return plan.buffer.sum(0)
    grad = plan.buffer
    if plan.mode == BiasGrad.ACCUMULATE and grad.shape[0] > 1 and (bias_index is not None
                                                                  or _as_4d(bias).shape[0] == 1):
        grad = grad.sum(0, keepdim=True)  # the batch slots, in PyTorch's fixed order
    if bias_index is not None:
        return _table_segment_sum(grad.reshape(grad.shape[1], -1), pb.index, bias_index)
    b4 = _as_4d(bias).shape
    dims = [d for d in (2, 3) if b4[d] == 1 and grad.shape[d] > 1]  # Nq / Nk broadcasts
    if dims:
        grad = grad.sum(dims, keepdim=True)
    return grad.reshape(bias.shape)


def _table_segment_sum(grad, entry: _IndexEntry, bias_index):
    """(H, Nq·Nk) reduced dense gradient → (H, R) table gradient, in a fixed order."""
    heads, entries = grad.shape[0], entry.entries
    perm, starts = _segments(entry, bias_index)
    out = _empty((heads, entries), torch.float32, grad.device)
    block = 64
    if heads * entries:
        _table_segment_sum_kernel[flat_grid(triton.cdiv(entries, block) * heads)](
            grad.contiguous(), perm, starts, out, heads, entries, grad.shape[1], BLOCK_R=block)
    return out


def attention_backward(dout, q, k, v, bias, bias_index, out, lse, *, value, scale, mask_diagonal, need_dbias):
    """Gradients (dq, dk, dv, dbias) of `attention_forward` (see the module docstring for the routing).

    dbias (fp32) has the bias's own shape: the (H, R) table, or the dense bias's shape, reduced
    over its broadcast dims without a (B, H, Nq, Nk) buffer (module docstring).
    """
    pb = _problem(q, k, v, bias, bias_index, value, scale, mask_diagonal)
    batch, nq, heads, dk = q.shape
    n = pb.sizes
    nk, dev = n["NK"], q.device
    dq = _empty(q.shape, q.dtype, dev)
    dk_ = _empty(k.shape, k.dtype, dev)
    dv = _empty(v.shape, v.dtype, dev) if ValueSource.V in pb.codes else None
    plan = _bias_grad_plan(q, k, bias, bias_index, need_dbias)
    if batch * heads * nq * nk == 0:  # nothing to attend: every gradient is zero
        if plan.mode != BiasGrad.NONE:
            plan.buffer.zero_()
        return (dq.zero_(), dk_.zero_(), dv.zero_() if dv is not None else None,
                _finish_bias_grad(plan, pb, bias, bias_index))
    delta = _empty((batch, heads, nq), torch.float32, dev)
    dq_acc = _empty(q.shape, torch.float32, dev) if pb.codes[0] == ValueSource.Q else dq
    do_strides = _strides4(dout)
    with _on_device(q):
        block = 32 if triton_interpreting() else 64
        dtot = n["D1"] + n["D2"]
        _attention_bwd_preprocess_kernel[flat_grid(triton.cdiv(nq, block) * batch * heads)](
            out, dout, delta, out.stride(0), out.stride(1), out.stride(2), *do_strides,
            batch * heads, heads, nq, dtot, BLOCK_M=block, BLOCK_D=_block_dim(dtot))
        sizes = (heads, nq, nk, dk, n["D1"], n["D2"], pb.scale * LOG2E.value, pb.scale, *pb.buckets.values())
        routing = dict(P1=pb.codes[0], P2=pb.codes[1], **pb.constexprs)
        _launch(_attention_bwd_dkdv_kernel, _dkdv_tuned, "BLOCK_N", nk, plan.units,
                q, k, *pb.parts, *pb.bias_ptrs, dout, lse, delta, dk_, dv if dv is not None else dk_, dq_acc,
                plan.buffer, *pb.strides, *do_strides, batch, *sizes,
                plan.units, plan.ho, plan.members, plan.mh, plan.gb, plan.gh, plan.table_stride, plan.table_slots,
                DBIAS=int(plan.mode), **routing)
        _launch(_attention_bwd_dq_kernel, _dq_tuned, "BLOCK_M", nq, batch * heads,
                q, k, *pb.parts, *pb.bias_ptrs, dout, lse, delta, dq, dq_acc, *pb.strides, *do_strides,
                batch * heads, *sizes, **routing)
    return dq, dk_, dv, _finish_bias_grad(plan, pb, bias, bias_index)


__all__ = ["attention_forward", "attention_backward", "dot_precision", "bucket", "MAX_HEAD_DIM", "VALUE_PARTS"]
