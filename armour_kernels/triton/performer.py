"""Fused Performer (FAVOR+) attention kernels, forward and backward (docs/performer.md).

Per (batch, head), with u = dn·x·Pᵀ (dn = d^-1/4) and the features φ computed on chip:
  softmax kernel: φ(x) = exp(u − ‖x‖²dn²/2 − stab) + 1e-4   (query stab: row max of u;
                  key stab M: max of u per (batch, head) [clean] or over everything [seed])
  relu kernel:    φ(x) = relu(u) + 1e-3
  out = φ(q)·S / (φ(q)·z),   S = Σₙ φ(kₙ) vₙᵀ (m × dv),   z = Σₙ φ(kₙ) (m)

Kernels (none writes φ(q) or φ(k), the n×m matrices, to memory). The m features are handled
BLOCK_F at a time (one chunk for the paper's m = 110 at d = 32; 266 features at d = 64 take five):
row-wise kernels loop over the chunks, the reductions over tokens run one program per chunk.
  _key_max_kernel            key stabiliser pre-pass: max of u per (batch·head, token block)
  _context_kernel            S and z in one pass over the keys (split over programs, summed on host)
  _output_kernel             φ(q)·S / φ(q)·z per query block (the query stabiliser: a first sweep)
  _bwd_query_rows_kernel     dq per query row; stores the row's stabiliser, φ(q)·z and (dO·out)/den
  _bwd_query_reduce_kernel   dS = Σ φ(q)ᵀ dO/den, dz = −Σ φ(q)·(dO·out)/den
  _bwd_key_kernel            dk, dv (dv folded into dq for value="q"), seed-mode dM partials
All of the backward is fused Triton except the seed mode's one-element routing of dM (PyTorch).

Gradient of a feature map, with G = ∂L/∂φ and E = ∂φ/∂u (φ − 1e-4 for softmax, [u > 0 or NaN] for relu, as torch):
  dx = dn·(G∘E)·P − dn²·rowsum(G∘E)·x   (the second term only for softmax, from ‖x‖²).
In seed mode the key stabiliser is not detached: dM = −Σ G∘E over everything, routed by the
launcher to the single (token, feature) that holds the maximum.

Programs: one flat int64 index per launch (`_grid.flat_grid`), so B·H is not capped by CUDA's
grid axes and b·stride, bh·n, bh·m·dv offsets cannot wrap at 2**31.

Precision (`_precision`, which gives the emulated error): every dot runs on tensor cores with
fp32 accumulation. The projection u = x·Pᵀ feeds exp, so it runs in 3×TF32 (≈ fp32) for every
input dtype (TF32 there would cost ~1e-3 relative error in the output, emulated); φ(k)ᵀ·v runs
natively in bf16 / fp16 for 16-bit inputs; every other product in TF32 for 16-bit inputs, and
for fp32 inputs in 3×TF32, or TF32 when torch.backends.cuda.matmul.allow_tf32. Expected error
against the fp64 reference: fp32 inputs as the old IEEE path (‖Δ‖/‖ref‖ ~1e-7); bf16 / fp16
inputs: the rounding of φ and the output to the input type (2^-9 / 2^-12 relative) dominates.
Not yet measured on a GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _interpreter_compat  # noqa: F401  (NumPy 2.4 vs the Triton interpreter)
from ._grid import flat_grid, flat_program_id
from ._nan import nan_max
from ._precision import dot, dot_native, precisions
from ._split import BATCH_FREE as _BATCH_FREE
from ._split import SPLIT_FREE as _SPLIT_FREE
from ._split import split_block, split_sizes

SOFTMAX_EPS = tl.constexpr(1e-4)  # φ's additive constants (docs/performer.md)
RELU_EPS = tl.constexpr(1e-3)


@triton.jit
def _load_rows(ptr, row0, n, stride_n, stride_d, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """A (BLOCK_N, BLOCK_D) tile of rows row0… of one (batch, head), in its stored type; zeros outside."""
    rows = row0 + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n) & (cols[None, :] < D)
    return tl.load(ptr + rows[:, None] * stride_n + cols[None, :] * stride_d, mask=mask, other=0.0)


@triton.jit
def _features(x, u, dn, stab, valid, SOFTMAX: tl.constexpr):
    """φ from the projection u; 0 where `valid` is false (padded features or tokens)."""
    if SOFTMAX:
        diag = tl.sum(x * x, axis=1) * (dn * dn * 0.5)
        phi = tl.exp(u - diag[:, None] - stab) + SOFTMAX_EPS
    else:
        phi = tl.maximum(u, 0.0, propagate_nan=tl.PropagateNan.ALL) + RELU_EPS  # relu(NaN) = NaN
    return tl.where(valid, phi, 0.0)


@triton.jit
def _feature_grad(g, x, u, phi, proj, dn, valid, SOFTMAX: tl.constexpr, PREC_VALUE: tl.constexpr):
    """dx from G = ∂L/∂φ (see the module docstring); also returns Σ G∘E per row."""
    if SOFTMAX:
        ge = tl.where(valid, g * (phi - SOFTMAX_EPS), 0.0)
        gsum = tl.sum(ge, axis=1)
        dx = dot(ge, proj, PREC_VALUE) * dn - (dn * dn) * gsum[:, None] * x
    else:
        ge = tl.where(valid & ((u > 0) | (u != u)), g, 0.0)  # torch's relu passes the gradient at NaN
        gsum = tl.sum(ge, axis=1)
        dx = dot(ge, proj, PREC_VALUE) * dn
    return dx, gsum


@triton.jit
def _chunk(x, p_ptr, c, rows, n, m, D, dn, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr, PREC_EXACT: tl.constexpr):
    """Feature chunk c (features c·BLOCK_F …): its rows of P, u = (dn·x)·Pᵀ, and which (row, feature) exist."""
    feats = c * BLOCK_F + tl.arange(0, BLOCK_F)
    cols = tl.arange(0, BLOCK_D)
    proj = tl.load(p_ptr + feats[:, None] * D + cols[None, :], mask=(feats[:, None] < m) & (cols[None, :] < D),
                   other=0.0)
    u = dot(x, tl.trans(proj), PREC_EXACT) * dn
    return proj, u, (rows[:, None] < n) & (feats[None, :] < m)


@triton.jit
def _load_chunk(ctx_ptr, ksum_ptr, bh, c, m, DV, BLOCK_F: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Chunk c of S (m, dv) and z (m) of one (batch·head), fp32, zero past m / dv."""
    feats = c * BLOCK_F + tl.arange(0, BLOCK_F)
    dvs = tl.arange(0, BLOCK_DV)
    ctx = tl.load(ctx_ptr + bh * m * DV + feats[:, None] * DV + dvs[None, :],
                  mask=(feats[:, None] < m) & (dvs[None, :] < DV), other=0.0)
    ksum = tl.load(ksum_ptr + bh * m + feats, mask=feats < m, other=0.0)
    return ctx, ksum


@triton.jit
def _store_chunk(ctx_ptr, ksum_ptr, part, c, n_feats, ctx, ksum, BLOCK_F: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Chunk c of one partial (n_feats, BLOCK_DV) / (n_feats,) reduction buffer (n_feats: chunks·BLOCK_F)."""
    feats = c * BLOCK_F + tl.arange(0, BLOCK_F)
    dvs = tl.arange(0, BLOCK_DV)
    tl.store(ctx_ptr + (part * n_feats + feats[:, None]) * BLOCK_DV + dvs[None, :], ctx)
    tl.store(ksum_ptr + part * n_feats + feats, ksum)


@triton.jit
def _row_block(n, BLOCK_N: tl.constexpr):
    """(bh, b, h, row block) of this program on a flat (B·H, row blocks) grid; bh, b int64."""
    blocks = tl.cdiv(n, BLOCK_N)
    pid = flat_program_id()
    bh = pid // blocks
    return bh, (pid % blocks).to(tl.int32)


@triton.jit
def _reduction_program(H, SPLITS, CHUNKS):
    """(bh, split, feature chunk, b, h) of this program on a flat (B·H, splits, chunks) grid."""
    pid = flat_program_id()
    bh = pid // (SPLITS * CHUNKS)
    rest = (pid % (SPLITS * CHUNKS)).to(tl.int32)
    return bh, rest // CHUNKS, rest % CHUNKS, bh // H, (bh % H).to(tl.int32)


@triton.jit(do_not_specialize=_BATCH_FREE)
def _key_max_kernel(k_ptr, p_ptr, part_ptr, BH, n, H, m, D, dn,
                    skb, skn, skh, skd,
                    BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
                    PREC_EXACT: tl.constexpr):
    bh, blk = _row_block(n, BLOCK_N)
    if bh >= BH:
        return
    b, h = bh // H, (bh % H).to(tl.int32)
    rows = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    k = _load_rows(k_ptr + b * skb + h * skh, blk * BLOCK_N, n, skn, skd, D, BLOCK_N, BLOCK_D).to(tl.float32)
    best = float("-inf")
    for c in range(0, tl.cdiv(m, BLOCK_F)):
        _, u, valid = _chunk(k, p_ptr, c, rows, n, m, D, dn, BLOCK_F, BLOCK_D, PREC_EXACT)
        chunk_max = nan_max(nan_max(tl.where(valid, u, float("-inf")), 1), 0)
        best = tl.maximum(best, chunk_max, propagate_nan=tl.PropagateNan.ALL)
    tl.store(part_ptr + bh * tl.cdiv(n, BLOCK_N) + blk, best)


@triton.jit(do_not_specialize=_SPLIT_FREE)
def _context_kernel(k_ptr, p_ptr, v_ptr, stab_ptr, ctx_ptr, ksum_ptr, BH, n, H, m, D, DV, dn, blocks_per_split,
                    SPLITS, CHUNKS, skb, skn, skh, skd, svb, svn, svh, svd,
                    SOFTMAX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                    PREC_EXACT: tl.constexpr, PREC_VALUE: tl.constexpr):
    """Partial S = Σ φ(k)ᵀv and z = Σ φ(k) of one feature chunk over one split of the keys."""
    bh, split, c, b, h = _reduction_program(H, SPLITS, CHUNKS)
    if bh >= BH:
        return
    stab = tl.load(stab_ptr + bh) if SOFTMAX else 0.0
    ctx = tl.zeros((BLOCK_F, BLOCK_DV), dtype=tl.float32)
    ksum = tl.zeros((BLOCK_F,), dtype=tl.float32)
    for i in range(0, blocks_per_split):
        row0, rows = split_block(split, blocks_per_split, i, BLOCK_N)
        k = _load_rows(k_ptr + b * skb + h * skh, row0, n, skn, skd, D, BLOCK_N, BLOCK_D).to(tl.float32)
        v = _load_rows(v_ptr + b * svb + h * svh, row0, n, svn, svd, DV, BLOCK_N, BLOCK_DV)
        _, u, valid = _chunk(k, p_ptr, c, rows, n, m, D, dn, BLOCK_F, BLOCK_D, PREC_EXACT)
        phi = _features(k, u, dn, stab, valid, SOFTMAX)
        ctx += dot_native(tl.trans(phi), v, PREC_VALUE)
        ksum += tl.sum(phi, axis=0)
    _store_chunk(ctx_ptr, ksum_ptr, bh * SPLITS + split, c, CHUNKS * BLOCK_F, ctx, ksum, BLOCK_F, BLOCK_DV)


@triton.jit
def _query_stats(q, p_ptr, ctx_ptr, ksum_ptr, bh, rows, n, m, D, DV, dn,
                 SOFTMAX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
                 BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                 PREC_EXACT: tl.constexpr, PREC_VALUE: tl.constexpr):
    """Per query row: the stabiliser (max of u over all features), φ(q)·S and φ(q)·z — two sweeps over the chunks."""
    stab = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if SOFTMAX:
        stab = stab + float("-inf")
        for c in range(0, tl.cdiv(m, BLOCK_F)):
            _, u, valid = _chunk(q, p_ptr, c, rows, n, m, D, dn, BLOCK_F, BLOCK_D, PREC_EXACT)
            stab = tl.maximum(stab, nan_max(tl.where(valid, u, float("-inf")), 1), propagate_nan=tl.PropagateNan.ALL)
        stab = tl.where(rows < n, stab, 0.0)  # padded rows: keep them finite
    num = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    den = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for c in range(0, tl.cdiv(m, BLOCK_F)):
        _, u, valid = _chunk(q, p_ptr, c, rows, n, m, D, dn, BLOCK_F, BLOCK_D, PREC_EXACT)
        phi = _features(q, u, dn, stab[:, None], valid, SOFTMAX)
        ctx, ksum = _load_chunk(ctx_ptr, ksum_ptr, bh, c, m, DV, BLOCK_F, BLOCK_DV)
        num += dot(phi, ctx, PREC_VALUE)
        den += tl.sum(phi * ksum[None, :], axis=1)
    return stab, num, tl.where(rows < n, den, 1.0)


@triton.jit(do_not_specialize=_BATCH_FREE)
def _output_kernel(q_ptr, p_ptr, ctx_ptr, ksum_ptr, out_ptr, BH, n, H, m, D, DV, dn,
                   sqb, sqn, sqh, sqd, sob, son, soh, sod,
                   SOFTMAX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   PREC_EXACT: tl.constexpr, PREC_VALUE: tl.constexpr):
    bh, blk = _row_block(n, BLOCK_N)
    if bh >= BH:
        return
    b, h = bh // H, (bh % H).to(tl.int32)
    row0 = blk * BLOCK_N
    rows = row0 + tl.arange(0, BLOCK_N)
    q = _load_rows(q_ptr + b * sqb + h * sqh, row0, n, sqn, sqd, D, BLOCK_N, BLOCK_D).to(tl.float32)
    _, num, den = _query_stats(q, p_ptr, ctx_ptr, ksum_ptr, bh, rows, n, m, D, DV, dn,
                               SOFTMAX, BLOCK_N, BLOCK_F, BLOCK_D, BLOCK_DV, PREC_EXACT, PREC_VALUE)
    dvs = tl.arange(0, BLOCK_DV)
    tl.store(out_ptr + b * sob + h * soh + rows[:, None] * son + dvs[None, :] * sod,
             (num / den[:, None]).to(out_ptr.dtype.element_ty), mask=(rows[:, None] < n) & (dvs[None, :] < DV))


@triton.jit(do_not_specialize=_BATCH_FREE)
def _bwd_query_rows_kernel(q_ptr, p_ptr, ctx_ptr, ksum_ptr, do_ptr, dq_ptr, stab_ptr, den_ptr, delta_ptr,
                           BH, n, H, m, D, DV, dn,
                           sqb, sqn, sqh, sqd, sdob, sdon, sdoh, sdod, sdqb, sdqn, sdqh, sdqd,
                           SOFTMAX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
                           BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                           PREC_EXACT: tl.constexpr, PREC_VALUE: tl.constexpr):
    """dq per query row; also stores each row's stabiliser, den = φ(q)·z and δ = (dO·out)/den
    ((B·H, n) fp32 each) for the reduction kernel."""
    bh, blk = _row_block(n, BLOCK_N)
    if bh >= BH:
        return
    b, h = bh // H, (bh % H).to(tl.int32)
    row0 = blk * BLOCK_N
    rows = row0 + tl.arange(0, BLOCK_N)
    q = _load_rows(q_ptr + b * sqb + h * sqh, row0, n, sqn, sqd, D, BLOCK_N, BLOCK_D).to(tl.float32)
    stab, num, den = _query_stats(q, p_ptr, ctx_ptr, ksum_ptr, bh, rows, n, m, D, DV, dn,
                                  SOFTMAX, BLOCK_N, BLOCK_F, BLOCK_D, BLOCK_DV, PREC_EXACT, PREC_VALUE)
    # out recomputed in fp32, not read back: a 16-bit stored out would spoil the
    # cancellation in G = (dO·Sᵀ − (dO·out)·z)/den.
    out = num / den[:, None]
    do = _load_rows(do_ptr + b * sdob + h * sdoh, row0, n, sdon, sdod, DV, BLOCK_N, BLOCK_DV).to(tl.float32)
    do_den = do / den[:, None]
    delta = tl.sum(do_den * out, axis=1)
    dq = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for c in range(0, tl.cdiv(m, BLOCK_F)):
        proj, u, valid = _chunk(q, p_ptr, c, rows, n, m, D, dn, BLOCK_F, BLOCK_D, PREC_EXACT)
        phi = _features(q, u, dn, stab[:, None], valid, SOFTMAX)
        ctx, ksum = _load_chunk(ctx_ptr, ksum_ptr, bh, c, m, DV, BLOCK_F, BLOCK_DV)
        g = dot(do_den, tl.trans(ctx), PREC_VALUE) - delta[:, None] * ksum[None, :]
        dq_c, _ = _feature_grad(g, q, u, phi, proj, dn, valid, SOFTMAX, PREC_VALUE)
        dq += dq_c
    dcols = tl.arange(0, BLOCK_D)
    tl.store(dq_ptr + b * sdqb + h * sdqh + rows[:, None] * sdqn + dcols[None, :] * sdqd,
             dq.to(dq_ptr.dtype.element_ty), mask=(rows[:, None] < n) & (dcols[None, :] < D))
    tl.store(stab_ptr + bh * n + rows, stab, mask=rows < n)
    tl.store(den_ptr + bh * n + rows, den, mask=rows < n)
    tl.store(delta_ptr + bh * n + rows, delta, mask=rows < n)


@triton.jit(do_not_specialize=_SPLIT_FREE)
def _bwd_query_reduce_kernel(q_ptr, p_ptr, do_ptr, stab_ptr, den_ptr, delta_ptr, dctx_ptr, dksum_ptr,
                             BH, n, H, m, D, DV, dn, blocks_per_split, SPLITS, CHUNKS,
                             sqb, sqn, sqh, sqd, sdob, sdon, sdoh, sdod,
                             SOFTMAX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
                             BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                             PREC_EXACT: tl.constexpr, PREC_VALUE: tl.constexpr):
    """Partial dS = Σ φ(q)ᵀ dO/den and dz = −Σ φ(q)·δ of one feature chunk over one split of rows."""
    bh, split, c, b, h = _reduction_program(H, SPLITS, CHUNKS)
    if bh >= BH:
        return
    dctx = tl.zeros((BLOCK_F, BLOCK_DV), dtype=tl.float32)
    dksum = tl.zeros((BLOCK_F,), dtype=tl.float32)
    for i in range(0, blocks_per_split):
        row0, rows = split_block(split, blocks_per_split, i, BLOCK_N)
        q = _load_rows(q_ptr + b * sqb + h * sqh, row0, n, sqn, sqd, D, BLOCK_N, BLOCK_D).to(tl.float32)
        stab = tl.load(stab_ptr + bh * n + rows, mask=rows < n, other=0.0)
        den = tl.load(den_ptr + bh * n + rows, mask=rows < n, other=1.0)
        delta = tl.load(delta_ptr + bh * n + rows, mask=rows < n, other=0.0)
        do = _load_rows(do_ptr + b * sdob + h * sdoh, row0, n, sdon, sdod, DV, BLOCK_N, BLOCK_DV).to(tl.float32)
        do_den = do / den[:, None]
        _, u, valid = _chunk(q, p_ptr, c, rows, n, m, D, dn, BLOCK_F, BLOCK_D, PREC_EXACT)
        phi = _features(q, u, dn, stab[:, None], valid, SOFTMAX)
        dctx += dot(tl.trans(phi), do_den, PREC_VALUE)
        dksum -= tl.sum(phi * delta[:, None], axis=0)
    _store_chunk(dctx_ptr, dksum_ptr, bh * SPLITS + split, c, CHUNKS * BLOCK_F, dctx, dksum, BLOCK_F, BLOCK_DV)


@triton.jit(do_not_specialize=_BATCH_FREE)
def _bwd_key_kernel(k_ptr, v_ptr, p_ptr, stab_ptr, dctx_ptr, dksum_ptr, dk_ptr, dv_ptr, dstab_ptr,
                    BH, n, H, m, D, DV, dn,
                    skb, skn, skh, skd, svb, svn, svh, svd,
                    sdkb, sdkn, sdkh, sdkd, sdvb, sdvn, sdvh, sdvd,
                    SOFTMAX: tl.constexpr, ACCUMULATE_DV: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                    PREC_EXACT: tl.constexpr, PREC_VALUE: tl.constexpr):
    """dk, dv per key row. ACCUMULATE_DV (value="q"): dv_ptr is dq, already holding the query-path
    gradient; add to it."""
    bh, blk = _row_block(n, BLOCK_N)
    if bh >= BH:
        return
    b, h = bh // H, (bh % H).to(tl.int32)
    row0 = blk * BLOCK_N
    rows = row0 + tl.arange(0, BLOCK_N)
    dvs = tl.arange(0, BLOCK_DV)
    dcols = tl.arange(0, BLOCK_D)
    k = _load_rows(k_ptr + b * skb + h * skh, row0, n, skn, skd, D, BLOCK_N, BLOCK_D).to(tl.float32)
    v = _load_rows(v_ptr + b * svb + h * svh, row0, n, svn, svd, DV, BLOCK_N, BLOCK_DV)
    stab = tl.load(stab_ptr + bh) if SOFTMAX else 0.0
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    gsum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for c in range(0, tl.cdiv(m, BLOCK_F)):
        proj, u, valid = _chunk(k, p_ptr, c, rows, n, m, D, dn, BLOCK_F, BLOCK_D, PREC_EXACT)
        phi = _features(k, u, dn, stab, valid, SOFTMAX)
        dctx, dksum = _load_chunk(dctx_ptr, dksum_ptr, bh, c, m, DV, BLOCK_F, BLOCK_DV)
        g = dot(v, tl.trans(dctx), PREC_VALUE) + dksum[None, :]
        dk_c, gsum_c = _feature_grad(g, k, u, phi, proj, dn, valid, SOFTMAX, PREC_VALUE)
        dk += dk_c
        gsum += gsum_c
        dv += dot(phi, dctx, PREC_VALUE)
    tl.store(dk_ptr + b * sdkb + h * sdkh + rows[:, None] * sdkn + dcols[None, :] * sdkd,
             dk.to(dk_ptr.dtype.element_ty), mask=(rows[:, None] < n) & (dcols[None, :] < D))
    dv_ptrs = dv_ptr + b * sdvb + h * sdvh + rows[:, None] * sdvn + dvs[None, :] * sdvd
    dv_mask = (rows[:, None] < n) & (dvs[None, :] < DV)
    if ACCUMULATE_DV:
        dv += tl.load(dv_ptrs, mask=dv_mask, other=0.0).to(tl.float32)
    tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty), mask=dv_mask)
    # ∂L/∂M for the seed mode's attached stabiliser: φ depends on −M, so dM = −Σ G∘E.
    tl.store(dstab_ptr + bh * tl.cdiv(n, BLOCK_N) + blk, -tl.sum(gsum, axis=0))


# ----------------------------------------------------------------------------- launchers


def _config(n, m, d, dv, dtype):
    """Block sizes: features are processed BLOCK_F at a time, so any m fits on chip.

    64 features per chunk on 8 warps: at 128 (or on 4 warps) ptxas spills the fp32 feature tiles
    on sm_90 (`armour-bench cubin`, bench/results/offline-sm90/)."""
    block_d = max(16, triton.next_power_of_2(d))
    block_f = min(max(16, triton.next_power_of_2(m)), 64)
    block_n = min(64, max(16, triton.next_power_of_2(n)))
    prec = precisions(dtype)
    cfg = dict(BLOCK_N=block_n, BLOCK_F=block_f, BLOCK_D=block_d, BLOCK_DV=max(16, triton.next_power_of_2(dv)),
               PREC_EXACT=prec["PREC_EXACT"], PREC_VALUE=prec["PREC_VALUE"])
    return cfg, (8 if block_f == 64 else 4), triton.cdiv(m, block_f)


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _key_block_maxima(k, proj, dn, cfg, warps):
    """Pre-pass: max of u per (batch·head, token block), shape (B·H, n_blocks)."""
    B, n, H, D = k.shape
    n_blocks = triton.cdiv(n, cfg["BLOCK_N"])
    part = torch.empty(B * H, n_blocks, device=k.device, dtype=torch.float32)
    _key_max_kernel[flat_grid(B * H * n_blocks)](k, proj, part, B * H, n, H, proj.shape[0], D, dn, *_strides(k),
                                                 BLOCK_N=cfg["BLOCK_N"], BLOCK_F=cfg["BLOCK_F"],
                                                 BLOCK_D=cfg["BLOCK_D"], PREC_EXACT=cfg["PREC_EXACT"],
                                                 num_warps=warps)
    return part


def _key_stabiliser(k, proj, dn, mode, cfg, warps):
    """The key stabiliser M per (batch·head) (clean) or one global M (seed), as a (B·H,) vector."""
    stab = _key_block_maxima(k, proj, dn, cfg, warps).amax(dim=1)
    if mode == "seed":
        stab = stab.amax().expand(stab.shape[0]).contiguous()
    return stab


def _reduce(kernel, args, strides, x, n, m, chunks, dv, cfg, warps, **flags):
    """Run a (B·H, split, feature chunk) reduction kernel over x's n rows; sum its partials to
    (B·H, m, dv) and (B·H, m). Both such kernels take (rows, P, …, mat_out, vec_out, BH, n, H, m,
    D, DV, dn, blocks per split, splits, chunks, …)."""
    bh = x.shape[0] * x.shape[2]
    splits, per_split = split_sizes(triton.cdiv(n, cfg["BLOCK_N"]), bh * chunks)
    feats = chunks * cfg["BLOCK_F"]
    mat = torch.empty(bh, splits, feats, cfg["BLOCK_DV"], device=x.device, dtype=torch.float32)
    vec = torch.empty(bh, splits, feats, device=x.device, dtype=torch.float32)
    kernel[flat_grid(bh * splits * chunks)](*args, mat, vec, bh, n, x.shape[2], m, x.shape[3], dv,
                                            *flags.pop("scalars"), per_split, splits, chunks, *strides, **flags,
                                            **cfg, num_warps=warps)
    return mat.sum(dim=1)[:, :m, :dv].contiguous(), vec.sum(dim=1)[:, :m].contiguous()


def _prepare(q, projection, kernel):
    proj = projection.to(device=q.device, dtype=torch.float32).contiguous()
    dn = q.shape[-1] ** -0.25
    return proj, dn, kernel == "softmax"


def performer_forward(q, k, v, projection, *, kernel, mode, value):
    """q (B, Nq, H, D), k (B, Nk, H, D), v (B, Nk, H, Dv) or None (value="q"), any strides; projection (m, D).

    Returns (out (B, Nq, H, Dv) contiguous in q's dtype, ctx (B·H, m, Dv) fp32, ksum (B·H, m) fp32,
    stab (B·H,) fp32): the small reductions the backward reuses. Empty in (B or H = 0), empty out;
    no keys (Nk = 0) gives a zero output.
    """
    v = q if value == "q" else v
    B, n, H, D = q.shape
    nk, dv = k.shape[1], v.shape[3]
    proj, dn, softmax = _prepare(q, projection, kernel)
    m = proj.shape[0]
    if B * H * n * nk == 0:
        f32 = dict(device=q.device, dtype=torch.float32)
        return (torch.zeros(B, n, H, dv, device=q.device, dtype=q.dtype), torch.zeros(B * H, m, dv, **f32),
                torch.zeros(B * H, m, **f32), torch.zeros(B * H, **f32))
    cfg, warps, chunks = _config(max(n, nk), m, D, dv, q.dtype)
    stab = (_key_stabiliser(k, proj, dn, mode, cfg, warps) if softmax
            else torch.zeros(B * H, device=q.device, dtype=torch.float32))
    ctx, ksum = _reduce(_context_kernel, (k, proj, v, stab), (*_strides(k), *_strides(v)), k, nk, m, chunks, dv,
                        cfg, warps, SOFTMAX=softmax, scalars=(dn,))
    out = torch.empty(B, n, H, dv, device=q.device, dtype=q.dtype)
    _output_kernel[flat_grid(B * H * triton.cdiv(n, cfg["BLOCK_N"]))](
        q, proj, ctx, ksum, out, B * H, n, H, m, D, dv, dn, *_strides(q), *_strides(out), SOFTMAX=softmax, **cfg,
        num_warps=warps)
    return out, ctx, ksum, stab


def _seed_stabiliser_grad(k, proj, dn, dstab, dk, cfg, warps):
    """Seed mode: M = max of u over the whole tensor is attached; send dM = Σ dstab to its argmax.

    The block maxima pre-pass finds the (batch·head, token block) holding the maximum; u is
    recomputed for that one block in PyTorch to find the (token, feature) — the element
    torch.max() routes the gradient to (up to exact ties). Every index stays a device tensor
    (gathers and an index_add), so the backward never waits on the GPU.
    """
    B, n, H, D = k.shape
    block = cfg["BLOCK_N"]
    part = _key_block_maxima(k, proj, dn, cfg, warps)
    # Indices as 1-element tensors and index_select, never 0-d tensors: a 0-d tensor used as an
    # index is read on the host.
    where = part.reshape(-1).argmax().reshape(1)
    bh, blk = where // part.shape[1], where % part.shape[1]
    b, h = bh // H, bh % H
    rows = blk * block + torch.arange(block, device=k.device)
    inside = rows < n
    rows = torch.where(inside, rows, n - 1)  # rows past the end: read a real row, never chosen below
    block_k = k.index_select(0, b).index_select(2, h).index_select(1, rows).reshape(block, D)  # one image's copy
    u = (block_k.float() @ proj.T) * dn
    u = torch.where(inside[:, None], u, float("-inf")).reshape(-1)
    best = u.argmax().reshape(1)
    token, feat = best // proj.shape[0], best % proj.shape[0]
    flat = (b * n + rows.index_select(0, token)) * H + h  # the row of dk (B, n, H, D) seen as (B·n·H, D)
    dk.view(-1, D).index_add_(0, flat, (dstab.sum() * dn * proj.index_select(0, feat)).to(dk.dtype))


def performer_backward(dout, q, k, v, projection, ctx, ksum, stab, *, kernel, mode, value):
    """Gradients (dq, dk, dv) of performer_forward; dv is None for value="q" (folded into dq)."""
    armour = value == "q"
    v = q if armour else v
    B, n, H, D = q.shape
    nk, dv_dim = k.shape[1], v.shape[3]
    proj, dn, softmax = _prepare(q, projection, kernel)
    bh, m = B * H, proj.shape[0]
    if bh * n * nk == 0:
        return torch.zeros_like(q), torch.zeros_like(k), None if armour else torch.zeros_like(v)
    cfg, warps, chunks = _config(max(n, nk), m, D, dv_dim, q.dtype)
    # value="q": dq collects two gradients, so it is accumulated in fp32 and cast at the end.
    dq = torch.empty(B, n, H, D, device=q.device, dtype=torch.float32 if armour else q.dtype)
    row_stats = torch.empty(3, bh, n, device=q.device, dtype=torch.float32)  # stabiliser, den, δ per query row
    _bwd_query_rows_kernel[flat_grid(bh * triton.cdiv(n, cfg["BLOCK_N"]))](
        q, proj, ctx, ksum, dout, dq, *row_stats, bh, n, H, m, D, dv_dim, dn,
        *_strides(q), *_strides(dout), *_strides(dq), SOFTMAX=softmax, **cfg, num_warps=warps)
    dctx, dksum = _reduce(_bwd_query_reduce_kernel, (q, proj, dout, *row_stats), (*_strides(q), *_strides(dout)),
                          q, n, m, chunks, dv_dim, cfg, warps, SOFTMAX=softmax, scalars=(dn,))
    k_blocks = triton.cdiv(nk, cfg["BLOCK_N"])
    dk = torch.empty(B, nk, H, D, device=q.device, dtype=torch.float32 if mode == "seed" else k.dtype)
    dv = dq if armour else torch.empty(B, nk, H, dv_dim, device=q.device, dtype=v.dtype)
    dstab = torch.empty(bh, k_blocks, device=q.device, dtype=torch.float32)
    _bwd_key_kernel[flat_grid(bh * k_blocks)](
        k, v, proj, stab, dctx, dksum, dk, dv, dstab, bh, nk, H, m, D, dv_dim, dn,
        *_strides(k), *_strides(v), *_strides(dk), *_strides(dv),
        SOFTMAX=softmax, ACCUMULATE_DV=armour, **cfg, num_warps=warps)
    if softmax and mode == "seed":
        _seed_stabiliser_grad(k, proj, dn, dstab, dk, cfg, warps)
    return dq.to(q.dtype), dk.to(k.dtype), (None if armour else dv)
