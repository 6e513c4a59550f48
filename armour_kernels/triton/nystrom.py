"""Fused Nyström attention kernels, forward and backward (docs/nystrom.md; nystrom-attention 0.0.14).

Per (batch, head), on the front-padded sequence of np = n + p rows (p zero rows in front so m
divides np; l = np / m rows per landmark), with qs = q·d^-1/2:
  q̃, k̃ = landmark means of qs, k                      _landmarks_kernel
  W    = A3·v,  A3 = softmax(q̃ kᵀ)  (m × n)           _a3v_kernel: flash-style over the keys,
                                                        split over programs, merged on the host
  Z    = pinv(A2), A2 = softmax(q̃ k̃ᵀ)  (m × m)        _pinv_kernel: 6 Razavi iterations on chip,
                                                        fp32; also Y = Z·W.  Seed mode first runs
                                                        it as a pre-pass for the global maxima.
  out  = A1·Y + conv(v),  A1 = softmax(qs k̃ᵀ) (n × m)  _output_kernel: row block by row block
So A1 (n×m), A3 (m×n) and A1·Z (n×m) never reach device memory: out = A1·(Z·(A3·v)).

The padded rows are zero (the original layer's to_qkv has no bias), so they are never loaded:
they count in the landmark means (divisor l), as p keys with score 0 and value 0 in A3's
softmax (initial running sum p), and as zero rows seen by the 33-tap conv. Only the last n
output rows are kept, so padded query rows are never computed.

Backward, with dO given for the real rows (padded rows are trimmed, so their dO is 0):
  _bwd_query_kernel (REDUCE)  dY = A1ᵀdO, dk̃ += dS1ᵀqs, dconv_w  (split reductions)
  PyTorch, fp32, m×m only      torch.func.vjp through A2 = softmax(q̃k̃ᵀ), Z = pinv(A2), Y = Z·W
                               gives dq̃, dk̃ (A2 path) and dW. NOT fused: ~60 small batched
                               (B, H, m, m) ops, recomputing A2 and the six iterations.
  _bwd_key_kernel              dk = dS3ᵀq̃ + dk̃[group]/l, dv = A3ᵀdW + convᵀ(dO), dq̃ += dS3·k
  _bwd_query_kernel (WRITE)    dq = d^-1/2·(dS1·k̃ + dq̃[group]/l) (+ dv for value="q")
with dS = A∘(dA − rowsum(A∘dA)) for each softmax. Also in PyTorch (tiny, not fused): summing
the split partials, merging the split A3 softmax, rowsum(dW∘W), the conv-weight sum over batch.

Programs: one flat int64 index per launch (`_grid.flat_grid`), so B·H is not capped by CUDA's
grid axes and b·stride, bh·m·d offsets cannot wrap at 2**31.

Precision (`_precision`, which gives the emulated error): every dot runs on tensor cores with
fp32 accumulation. The m×m work (A2, the six pinv iterations, Z·W) and the score products
q̃·kᵀ, qs·k̃ᵀ (they feed exp) run in 3×TF32 (≈ fp32) for every input dtype; A3·v and A1ᵀ·dO
(probabilities × a 16-bit input) natively in bf16 / fp16; every other product in TF32 for
16-bit inputs, and for fp32 inputs in 3×TF32, or TF32 when torch.backends.cuda.matmul.allow_tf32.
Expected error against the fp64 reference: fp32 inputs as the old IEEE path (‖Δ‖/‖ref‖ ~1e-7;
~1e-5 with allow_tf32, emulated); bf16 / fp16 inputs: the rounding of the output and of P to
the input type (2^-9 / 2^-12 relative) dominates. Not yet measured on a GPU.

The on-chip pinv handles m ≤ PINV_MAX_M (64, the paper's m); larger m runs the m×m iterations
in PyTorch (fp32) instead.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _interpreter_compat  # noqa: F401  (NumPy 2.4 vs the Triton interpreter)
from ._grid import flat_grid, flat_program_id
from ._nan import nan_max
from ._pinv import landmark_pinv
from ._precision import EXACT, dot, dot_native, precisions
from ._split import BATCH_FREE as _BATCH_FREE
from ._split import SPLIT_FREE as _SPLIT_FREE
from ._split import split_block, split_program, split_sizes

PINV_MAX_M = 64  # above this the fp32 m×m matrices overflow shared memory (128: 256 KiB): PyTorch runs the pinv
# Warps and stages, from the sm_90 compile report (`armour-bench cubin`, bench/results/offline-sm90/,
# m = 64, d = 32, with the launch specialisation): the kernels that hold fp32 (landmark × feature)
# tiles run spill-free on 8 warps (the output kernel: 74 registers, 0 B spilled at 8 warps / 2
# stages; it spilled 1.7 KB per thread at the default 4 warps with IEEE fp32 dots). The pinv kernel
# keeps five m×m fp32 tiles live across its iterations and spills a little at any width: 48 B at
# 4 warps, 92 B at 8, 1.2 KB at 16, so it runs on 4.
_WIDE_WARPS = 8
_PINV_WARPS = 4
_OUTPUT_STAGES = 2  # the output kernel has no key loop to pipeline: fewer buffers, fewer registers


@triton.jit
def _tile(ptr, rows, cols, row_mask, n_cols, stride_r, stride_c):
    """Tile ptr[rows, cols] in its stored type; zero where a row is masked out or a column ≥ n_cols."""
    mask = row_mask[:, None] & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * stride_r + cols[None, :] * stride_c, mask=mask, other=0.0)


@triton.jit
def _small(ptr, m, n_cols, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """A contiguous (m, n_cols) fp32 per-(batch·head) matrix, padded with zeros to (BLOCK_M, BLOCK_C)."""
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    return _tile(ptr, rows, cols, rows < m, n_cols, n_cols, 1)


@triton.jit
def _store_small(ptr, x, m, n_cols, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    tl.store(ptr + rows[:, None] * n_cols + cols[None, :], x, mask=(rows[:, None] < m) & (cols[None, :] < n_cols))


@triton.jit(do_not_specialize=_BATCH_FREE)
def _landmarks_kernel(q_ptr, k_ptr, ql_ptr, kl_ptr, BH, H, m, D, pad, group, scale,
                      sqb, sqn, sqh, sqd, skb, skn, skh, skd,
                      BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One landmark of one (batch, head): q̃ = mean of qs, k̃ = mean of k over its group of l padded rows.

    The group's padded rows (token index < 0) are zero: they count in the divisor only.
    """
    pid = flat_program_id()
    bh = pid // m
    if bh >= BH:
        return
    mark = (pid % m).to(tl.int32)
    b, h = bh // H, (bh % H).to(tl.int32)
    cols = tl.arange(0, BLOCK_D)
    q_sum = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    k_sum = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for i in range(0, tl.cdiv(group, BLOCK_N)):
        offset = i * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = mark * group - pad + offset  # token indices
        ok = (offset < group) & (rows >= 0)
        q_sum += _tile(q_ptr + b * sqb + h * sqh, rows, cols, ok, D, sqn, sqd).to(tl.float32)
        k_sum += _tile(k_ptr + b * skb + h * skh, rows, cols, ok, D, skn, skd).to(tl.float32)
    out = (bh * m + mark) * D + cols
    tl.store(ql_ptr + out, tl.sum(q_sum, axis=0) * (scale / group), mask=cols < D)
    tl.store(kl_ptr + out, tl.sum(k_sum, axis=0) / group, mask=cols < D)


@triton.jit
def _key_block(ql, k_ptr, v_ptr, keys, n, D, DV, skn, skd, svn, svd,
               BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PREC_EXACT: tl.constexpr):
    """k (fp32) and v (stored type) tiles of one block of keys and the landmark scores q̃·kᵀ (−inf past the last key)."""
    k = _tile(k_ptr, keys, tl.arange(0, BLOCK_D), keys < n, D, skn, skd).to(tl.float32)
    v = _tile(v_ptr, keys, tl.arange(0, BLOCK_DV), keys < n, DV, svn, svd)
    s = dot(ql, tl.trans(k), PREC_EXACT)
    return k, v, tl.where(keys[None, :] < n, s, float("-inf"))


@triton.jit(do_not_specialize=_SPLIT_FREE)
def _a3v_kernel(ql_ptr, k_ptr, v_ptr, acc_ptr, max_ptr, sum_ptr, BH, n, H, m, D, DV, pad, blocks_per_split,
                L_BLOCKS, SPLITS, skb, skn, skh, skd, svb, svn, svh, svd,
                BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_DV: tl.constexpr, PREC_EXACT: tl.constexpr, PREC_VALUE: tl.constexpr):
    """Partial online softmax of A3 = softmax(q̃ kᵀ) times v over one split of the keys."""
    pid = flat_program_id()
    bh = pid // (L_BLOCKS * SPLITS)
    if bh >= BH:
        return
    rest = (pid % (L_BLOCKS * SPLITS)).to(tl.int32)
    lblk, split = rest // SPLITS, rest % SPLITS
    b, h = bh // H, (bh % H).to(tl.int32)
    marks = lblk * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.arange(0, BLOCK_D)
    dvs = tl.arange(0, BLOCK_DV)
    ql = _tile(ql_ptr + bh * m * D, marks, cols, marks < m, D, D, 1)
    # The p padded keys (split 0 only): score 0, value 0 -> running max 0, running sum p.
    first = (split == 0) & (pad > 0)
    run_max = tl.zeros((BLOCK_L,), dtype=tl.float32) + tl.where(first, 0.0, float("-inf"))
    run_sum = tl.zeros((BLOCK_L,), dtype=tl.float32) + tl.where(first, pad * 1.0, 0.0)
    acc = tl.zeros((BLOCK_L, BLOCK_DV), dtype=tl.float32)
    for i in range(0, blocks_per_split):
        keys = (split * blocks_per_split + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        _, v, s = _key_block(ql, k_ptr + b * skb + h * skh, v_ptr + b * svb + h * svh, keys, n, D, DV,
                             skn, skd, svn, svd, BLOCK_D, BLOCK_DV, PREC_EXACT)
        new_max = tl.maximum(run_max, tl.max(s, axis=1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # an all-padding block
        alpha = tl.exp(run_max - safe_max)
        p = tl.exp(s - safe_max[:, None])
        run_sum = run_sum * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + dot_native(p, v, PREC_VALUE)
        run_max = new_max
    part = (bh * SPLITS + split) * m
    tl.store(acc_ptr + (part + marks[:, None]) * DV + dvs[None, :], acc,
             mask=(marks[:, None] < m) & (dvs[None, :] < DV))
    tl.store(max_ptr + part + marks, run_max, mask=marks < m)
    tl.store(sum_ptr + part + marks, run_sum, mask=marks < m)


@triton.jit
def _softmax_rows(s, valid_cols):
    s = tl.where(valid_cols, s, float("-inf"))
    p = tl.exp(s - tl.max(s, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@triton.jit(do_not_specialize=_BATCH_FREE)
def _pinv_kernel(ql_ptr, kl_ptr, w_ptr, y_ptr, maxima_ptr, BH, m, D, DV, iterations,
                 MAXIMA_ONLY: tl.constexpr, SEED: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PREC_EXACT: tl.constexpr):
    """Y = pinv(A2)·W for one (batch, head), A2 = softmax(q̃ k̃ᵀ), all on chip in fp32 (3×TF32 dots).

    MAXIMA_ONLY (the seed mode's pre-pass): store A2's max row- and column-abs-sums and stop.
    SEED: Z₀'s divisor is the product of the global maxima, read from maxima_ptr[0:2].
    """
    bh = flat_program_id()
    if bh >= BH:
        return
    idx = tl.arange(0, BLOCK_M)
    ql = _small(ql_ptr + bh * m * D, m, D, BLOCK_M, BLOCK_D)
    kl = _small(kl_ptr + bh * m * D, m, D, BLOCK_M, BLOCK_D)
    valid = (idx[:, None] < m) & (idx[None, :] < m)
    a2 = tl.where(valid, _softmax_rows(dot(ql, tl.trans(kl), PREC_EXACT), idx[None, :] < m), 0.0)
    row_max = nan_max(tl.sum(tl.abs(a2), axis=1), 0)  # a NaN reaches Z₀ (and, seed, every head), as torch.max
    col_max = nan_max(tl.sum(tl.abs(a2), axis=0), 0)
    if MAXIMA_ONLY:
        tl.store(maxima_ptr + bh * 2, row_max)
        tl.store(maxima_ptr + bh * 2 + 1, col_max)
    else:
        if SEED:
            row_max = tl.load(maxima_ptr)
            col_max = tl.load(maxima_ptr + 1)
        eye = tl.where(valid & (idx[:, None] == idx[None, :]), 1.0, 0.0)
        z = tl.trans(a2) / (row_max * col_max)
        for _ in range(0, iterations):
            az = dot(a2, z, PREC_EXACT)
            t = dot(az, 7.0 * eye - az, PREC_EXACT)
            t = dot(az, 15.0 * eye - t, PREC_EXACT)
            z = 0.25 * dot(z, 13.0 * eye - t, PREC_EXACT)
        w = _small(w_ptr + bh * m * DV, m, DV, BLOCK_M, BLOCK_DV)
        _store_small(y_ptr + bh * m * DV, dot(z, w, PREC_EXACT), m, DV, BLOCK_M, BLOCK_DV)


@triton.jit
def _query_block(q_ptr, kl_ptr, y_ptr, bh, rows, n, m, D, DV, scale, sqn, sqd,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PREC_EXACT: tl.constexpr):
    """qs rows (fp32), k̃, Y and A1 = softmax(qs k̃ᵀ) for one block of query rows."""
    cols = tl.arange(0, BLOCK_D)
    qs = _tile(q_ptr, rows, cols, rows < n, D, sqn, sqd).to(tl.float32) * scale
    kl = _small(kl_ptr + bh * m * D, m, D, BLOCK_M, BLOCK_D)
    y = _small(y_ptr + bh * m * DV, m, DV, BLOCK_M, BLOCK_DV)
    a1 = _softmax_rows(dot(qs, tl.trans(kl), PREC_EXACT), tl.arange(0, BLOCK_M)[None, :] < m)
    return qs, kl, y, a1


@triton.jit
def _conv_rows(x_ptr, w_ptr, h, rows, n, DV, sxn, sxd, KSIZE, SIGN: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Σ_t w[h, t]·x[rows + SIGN·(t − KSIZE//2)] over the real rows (zeros elsewhere), fp32.

    SIGN = 1 is the residual conv itself (x = v); SIGN = −1 its transpose (x = dO), for dv.
    """
    dvs = tl.arange(0, BLOCK_DV)
    acc = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    half = KSIZE // 2
    for t in range(0, KSIZE):
        src = rows + SIGN * (t - half)
        x = _tile(x_ptr, src, dvs, (src >= 0) & (src < n), DV, sxn, sxd).to(tl.float32)
        acc += tl.load(w_ptr + h * KSIZE + t).to(tl.float32) * x
    return acc


@triton.jit(do_not_specialize=_BATCH_FREE)
def _output_kernel(q_ptr, v_ptr, kl_ptr, y_ptr, w_ptr, out_ptr, BH, n, H, m, D, DV, scale, KSIZE,
                   sqb, sqn, sqh, sqd, svb, svn, svh, svd, sob, son, soh, sod,
                   HAS_CONV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   PREC_EXACT: tl.constexpr, PREC_VALUE: tl.constexpr):
    blocks = tl.cdiv(n, BLOCK_N)
    pid = flat_program_id()
    bh = pid // blocks
    if bh >= BH:
        return
    b, h = bh // H, (bh % H).to(tl.int32)
    rows = (pid % blocks).to(tl.int32) * BLOCK_N + tl.arange(0, BLOCK_N)
    _, _, y, a1 = _query_block(q_ptr + b * sqb + h * sqh, kl_ptr, y_ptr, bh, rows, n, m, D, DV, scale, sqn, sqd,
                               BLOCK_M, BLOCK_D, BLOCK_DV, PREC_EXACT)
    out = dot(a1, y, PREC_VALUE)
    if HAS_CONV:
        out += _conv_rows(v_ptr + b * svb + h * svh, w_ptr, h, rows, n, DV, svn, svd, KSIZE, 1, BLOCK_N, BLOCK_DV)
    dvs = tl.arange(0, BLOCK_DV)
    tl.store(out_ptr + b * sob + h * soh + rows[:, None] * son + dvs[None, :] * sod,
             out.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < n) & (dvs[None, :] < DV))


@triton.jit(do_not_specialize=_SPLIT_FREE)
def _bwd_query_kernel(q_ptr, v_ptr, do_ptr, kl_ptr, y_ptr, dql_ptr, dvq_ptr, dq_ptr,
                      dy_ptr, dkl_ptr, dw_ptr, BH, n, H, m, D, DV, pad, group, scale, KSIZE, blocks_per_split,
                      SPLITS, sqb, sqn, sqh, sqd, svb, svn, svh, svd, sdob, sdon, sdoh, sdod,
                      sdqb, sdqn, sdqh, sdqd,
                      WRITE_DQ: tl.constexpr, HAS_CONV: tl.constexpr, ARMOUR: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                      PREC_EXACT: tl.constexpr, PREC_VALUE: tl.constexpr):
    """The query side of the backward; see the module docstring for the two phases.

    REDUCE (WRITE_DQ False): partial dY (m×dv), dk̃ (m×d) and dconv_w (KSIZE) per split.
    WRITE_DQ: dq for each row, with the landmark term dq̃[group]/l (and, ARMOUR, the value
    gradient dvq already computed by the key pass).
    """
    bh, split, b, h = split_program(H, SPLITS)
    if bh >= BH:
        return
    cols = tl.arange(0, BLOCK_D)
    dvs = tl.arange(0, BLOCK_DV)
    taps = tl.arange(0, BLOCK_K)
    dy = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    dkl = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    dw = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for i in range(0, blocks_per_split):
        _, rows = split_block(split, blocks_per_split, i, BLOCK_N)
        qs, kl, y, a1 = _query_block(q_ptr + b * sqb + h * sqh, kl_ptr, y_ptr, bh, rows, n, m, D, DV, scale,
                                     sqn, sqd, BLOCK_M, BLOCK_D, BLOCK_DV, PREC_EXACT)
        do = _tile(do_ptr + b * sdob + h * sdoh, rows, dvs, rows < n, DV, sdon, sdod)
        da1 = dot(do, tl.trans(y), PREC_VALUE)
        ds1 = a1 * (da1 - tl.sum(a1 * da1, axis=1)[:, None])
        if WRITE_DQ:
            groups = (rows + pad) // group
            dql = _tile(dql_ptr + bh * m * D, groups, cols, rows < n, D, D, 1)
            dq = (dot(ds1, kl, PREC_VALUE) + dql / group) * scale
            if ARMOUR:
                dq += _tile(dvq_ptr + b * sdqb + h * sdqh, rows, cols, rows < n, D, sdqn, sdqd)
            tl.store(dq_ptr + b * sdqb + h * sdqh + rows[:, None] * sdqn + cols[None, :] * sdqd,
                     dq.to(dq_ptr.dtype.element_ty), mask=(rows[:, None] < n) & (cols[None, :] < D))
        else:
            dy += dot_native(tl.trans(a1), do, PREC_VALUE)
            dkl += dot(tl.trans(ds1), qs, PREC_VALUE)
            if HAS_CONV:
                do32 = do.to(tl.float32)
                for t in range(0, KSIZE):  # dw[t] = Σ dO[i]·v[i + t − K//2]
                    src = rows + t - KSIZE // 2
                    v = _tile(v_ptr + b * svb + h * svh, src, dvs, (src >= 0) & (src < n), DV, svn, svd)
                    dw += tl.where(taps == t, tl.sum(tl.sum(do32 * v.to(tl.float32), axis=1), axis=0), 0.0)
    if not WRITE_DQ:
        part = bh * SPLITS + split
        _store_small(dy_ptr + part * m * DV, dy, m, DV, BLOCK_M, BLOCK_DV)
        _store_small(dkl_ptr + part * m * D, dkl, m, D, BLOCK_M, BLOCK_D)
        tl.store(dw_ptr + part * KSIZE + taps, dw, mask=taps < KSIZE)


@triton.jit(do_not_specialize=_SPLIT_FREE)
def _bwd_key_kernel(k_ptr, v_ptr, do_ptr, ql_ptr, lse_ptr, dwv_ptr, rs_ptr, dkl_ptr, w_ptr,
                    dk_ptr, dv_ptr, dql_ptr, BH, n, H, m, D, DV, pad, group, KSIZE, blocks_per_split, SPLITS,
                    skb, skn, skh, skd, svb, svn, svh, svd, sdob, sdon, sdoh, sdod,
                    sdkb, sdkn, sdkh, sdkd, sdvb, sdvn, sdvh, sdvd,
                    HAS_CONV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                    PREC_EXACT: tl.constexpr, PREC_VALUE: tl.constexpr):
    """dk, dv per key row and the partial dq̃ = Σ dS3·k of this split (A3 recomputed from its lse)."""
    bh, split, b, h = split_program(H, SPLITS)
    if bh >= BH:
        return
    cols = tl.arange(0, BLOCK_D)
    dvs = tl.arange(0, BLOCK_DV)
    marks = tl.arange(0, BLOCK_M)
    ql = _small(ql_ptr + bh * m * D, m, D, BLOCK_M, BLOCK_D)
    dwv = _small(dwv_ptr + bh * m * DV, m, DV, BLOCK_M, BLOCK_DV)
    lse = tl.load(lse_ptr + bh * m + marks, mask=marks < m, other=0.0)
    rs = tl.load(rs_ptr + bh * m + marks, mask=marks < m, other=0.0)
    dql = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for i in range(0, blocks_per_split):
        _, rows = split_block(split, blocks_per_split, i, BLOCK_N)
        k, v, s = _key_block(ql, k_ptr + b * skb + h * skh, v_ptr + b * svb + h * svh, rows, n, D, DV,
                             skn, skd, svn, svd, BLOCK_D, BLOCK_DV, PREC_EXACT)
        a3 = tl.where((marks[:, None] < m) & (rows[None, :] < n), tl.exp(s - lse[:, None]), 0.0)
        da3 = dot(dwv, tl.trans(v), PREC_VALUE)
        ds3 = a3 * (da3 - rs[:, None])
        groups = (rows + pad) // group
        dk = dot(tl.trans(ds3), ql, PREC_VALUE)
        dk += _tile(dkl_ptr + bh * m * D, groups, cols, rows < n, D, D, 1) / group
        dv = dot(tl.trans(a3), dwv, PREC_VALUE)
        if HAS_CONV:
            dv += _conv_rows(do_ptr + b * sdob + h * sdoh, w_ptr, h, rows, n, DV, sdon, sdod, KSIZE, -1,
                             BLOCK_N, BLOCK_DV)
        dql += dot(ds3, k, PREC_VALUE)
        tl.store(dk_ptr + b * sdkb + h * sdkh + rows[:, None] * sdkn + cols[None, :] * sdkd,
                 dk.to(dk_ptr.dtype.element_ty), mask=(rows[:, None] < n) & (cols[None, :] < D))
        tl.store(dv_ptr + b * sdvb + h * sdvh + rows[:, None] * sdvn + dvs[None, :] * sdvd,
                 dv.to(dv_ptr.dtype.element_ty), mask=(rows[:, None] < n) & (dvs[None, :] < DV))
    part = bh * SPLITS + split
    _store_small(dql_ptr + part * m * D, dql, m, D, BLOCK_M, BLOCK_D)


# ----------------------------------------------------------------------------- launchers


def _config(n, m, d, dv, dtype):
    block_m = max(16, triton.next_power_of_2(m))
    cfg = dict(BLOCK_M=block_m, BLOCK_D=max(16, triton.next_power_of_2(d)),
               BLOCK_DV=max(16, triton.next_power_of_2(dv)))
    block_n = 64 if block_m <= 64 else (32 if block_m <= 128 else 16)  # fp32 tiles must fit shared memory
    return cfg, min(block_n, max(16, triton.next_power_of_2(n))), precisions(dtype)


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _layout(q, num_landmarks):
    n = q.shape[1]
    pad = (num_landmarks - n % num_landmarks) % num_landmarks
    return pad, (n + pad) // num_landmarks


def _landmark_a2(ql, kl):
    return torch.softmax(ql @ kl.transpose(-1, -2), dim=-1)


def _a3v(ql, k, v, pad, cfg, block_n, prec):
    """W = A3·v (B·H, m, dv) and A3's log-sum-exp (B·H, m): split flash reduction + merge."""
    B, n, H, D = k.shape
    bh, m, dv = B * H, ql.shape[1], v.shape[3]
    block_l = min(cfg["BLOCK_M"], 64)
    l_blocks = triton.cdiv(m, block_l)
    splits, per_split = split_sizes(triton.cdiv(n, block_n), bh * l_blocks)
    acc = torch.empty(bh, splits, m, dv, device=k.device, dtype=torch.float32)
    run_max = torch.empty(bh, splits, m, device=k.device, dtype=torch.float32)
    run_sum = torch.empty_like(run_max)
    _a3v_kernel[flat_grid(bh * l_blocks * splits)](
        ql, k, v, acc, run_max, run_sum, bh, n, H, m, D, dv, pad, per_split, l_blocks, splits,
        *_strides(k), *_strides(v), BLOCK_L=block_l, BLOCK_N=block_n, BLOCK_D=cfg["BLOCK_D"],
        BLOCK_DV=cfg["BLOCK_DV"], PREC_EXACT=prec["PREC_EXACT"], PREC_VALUE=prec["PREC_VALUE"],
        num_warps=_WIDE_WARPS)
    top = run_max.amax(dim=1, keepdim=True)
    weight = torch.exp(run_max - top)
    total = (run_sum * weight).sum(dim=1)
    w = (acc * weight[..., None]).sum(dim=1) / total[..., None]
    return w, top.squeeze(1) + torch.log(total)


def _pinv_times(ql, kl, w, iterations, mode, cfg):
    """Y = pinv(A2)·W (B·H, m, dv): on chip for m ≤ PINV_MAX_M, else PyTorch fp32."""
    bh, m, D = ql.shape
    dv = w.shape[2]
    if m > PINV_MAX_M:
        return landmark_pinv(_landmark_a2(ql, kl), iterations, mode) @ w
    seed = mode == "seed"
    maxima = torch.empty(bh, 2, device=ql.device, dtype=torch.float32)
    blocks = dict(BLOCK_M=cfg["BLOCK_M"], BLOCK_D=cfg["BLOCK_D"], BLOCK_DV=cfg["BLOCK_DV"], PREC_EXACT=EXACT)
    if seed:  # pre-pass: every (b, h)'s maxima, then the global ones
        _pinv_kernel[flat_grid(bh)](ql, kl, w, w, maxima, bh, m, D, dv, iterations, MAXIMA_ONLY=True, SEED=False,
                                    **blocks, num_warps=_PINV_WARPS)
        maxima = maxima.amax(dim=0).contiguous()
    y = torch.empty(bh, m, dv, device=ql.device, dtype=torch.float32)
    _pinv_kernel[flat_grid(bh)](ql, kl, w, y, maxima, bh, m, D, dv, iterations, MAXIMA_ONLY=False, SEED=seed,
                                **blocks, num_warps=_PINV_WARPS)
    return y


def _conv_args(conv_weight, H, device):
    if conv_weight is None:
        return torch.zeros(1, device=device, dtype=torch.float32), 1, False
    return conv_weight.reshape(H, -1).to(torch.float32).contiguous(), conv_weight.shape[-2], True


def _saved_shapes(B, H, m, D, dv):
    bh = B * H
    return (bh, m, D), (bh, m, D), (bh, m, dv), (bh, m, dv), (bh, m)


def nystrom_forward(q, k, v, conv_weight, *, num_landmarks, pinv_iterations=6, mode="clean", value="v"):
    """q, k (B, N, H, D), v (B, N, H, Dv) or None for value="q" (the unscaled q is the value); any strides.

    conv_weight: the (H, 1, K, 1) residual conv weight or None. Returns out (B, N, H, Dv)
    contiguous in q's dtype and the small fp32 tensors the backward needs: (q̃, k̃, W, Y, lse3).
    Empty in (B, H or N = 0), empty out.
    """
    v = q if value == "q" else v
    B, n, H, D = q.shape
    dv = v.shape[3]
    m = num_landmarks
    if B * H * n == 0:
        out = torch.zeros(B, n, H, dv, device=q.device, dtype=q.dtype)
        return out, tuple(torch.zeros(s, device=q.device, dtype=torch.float32) for s in _saved_shapes(B, H, m, D, dv))
    pad, group = _layout(q, m)
    cfg, block_n, prec = _config(n, m, D, dv, q.dtype)
    scale = D ** -0.5
    bh = B * H
    ql = torch.empty(bh, m, D, device=q.device, dtype=torch.float32)
    kl = torch.empty_like(ql)
    _landmarks_kernel[flat_grid(bh * m)](q, k, ql, kl, bh, H, m, D, pad, group, scale, *_strides(q), *_strides(k),
                                         BLOCK_N=min(64, triton.next_power_of_2(group)), BLOCK_D=cfg["BLOCK_D"])
    w, lse = _a3v(ql, k, v, pad, cfg, block_n, prec)
    y = _pinv_times(ql, kl, w, pinv_iterations, mode, cfg)
    weight, ksize, has_conv = _conv_args(conv_weight, H, q.device)
    out = torch.empty(B, n, H, dv, device=q.device, dtype=q.dtype)
    _output_kernel[flat_grid(bh * triton.cdiv(n, block_n))](
        q, v, kl, y, weight, out, bh, n, H, m, D, dv, scale, ksize, *_strides(q), *_strides(v), *_strides(out),
        HAS_CONV=has_conv, BLOCK_N=block_n, **cfg, PREC_EXACT=prec["PREC_EXACT"], PREC_VALUE=prec["PREC_VALUE"],
        num_warps=_WIDE_WARPS, num_stages=_OUTPUT_STAGES)
    return out, (ql, kl, w, y, lse)


def _pinv_backward(ql, kl, w, dy, iterations, mode, B, H):
    """Backward of A2 = softmax(q̃k̃ᵀ), Z = pinv(A2), Y = Z·W in PyTorch fp32 (m×m work: NOT fused).

    torch.func.vjp, because plain autograd is switched off inside a custom op's body. Runs on
    the (B, H, m, ·) batch at once, so the seed mode's global maxima couple the heads exactly
    as in the reference. Returns dq̃, dk̃ (this path only) and dW.
    """
    def landmark_y(q_l, k_l, w_):
        return landmark_pinv(_landmark_a2(q_l, k_l), iterations, mode) @ w_

    _, vjp = torch.func.vjp(landmark_y, *(t.view(B, H, *t.shape[1:]) for t in (ql, kl, w)))
    return [g.reshape(B * H, *g.shape[2:]) for g in vjp(dy.view(B, H, *dy.shape[1:]))]


def nystrom_backward(dout, q, k, v, conv_weight, saved, *, num_landmarks, pinv_iterations=6, mode="clean",
                     value="v"):
    """Gradients (dq, dk, dv, dconv_weight) of nystrom_forward; `saved` is its second result.

    dv is None for value="q" (folded into dq); dconv_weight is None without a conv, else
    (H, 1, K, 1) fp32-accumulated in conv_weight's dtype.
    """
    armour = value == "q"
    v = q if armour else v
    ql, kl, w, y, lse = saved
    B, n, H, D = q.shape
    dv_dim = v.shape[3]
    m = num_landmarks
    bh = B * H
    if bh * n == 0:
        dconv = None if conv_weight is None else torch.zeros_like(conv_weight)
        return (torch.zeros_like(q), torch.zeros_like(k), None if armour else torch.zeros_like(v), dconv)
    pad, group = _layout(q, m)
    cfg, block_n, prec = _config(n, m, D, dv_dim, q.dtype)
    scale = D ** -0.5
    weight, ksize, has_conv = _conv_args(conv_weight, H, q.device)
    block_k = max(16, triton.next_power_of_2(ksize))
    n_blocks = triton.cdiv(n, block_n)
    splits, per_split = split_sizes(n_blocks, bh)
    dev, f32 = q.device, torch.float32
    # Above 128 landmarks the fp32 (m, d) operands are large: no multi-buffering (shared memory).
    stages = 1 if cfg["BLOCK_M"] > 128 else 2
    precs = dict(PREC_EXACT=prec["PREC_EXACT"], PREC_VALUE=prec["PREC_VALUE"])
    common = dict(HAS_CONV=has_conv, ARMOUR=armour, BLOCK_N=block_n, BLOCK_M=cfg["BLOCK_M"], BLOCK_K=block_k,
                  BLOCK_D=cfg["BLOCK_D"], BLOCK_DV=cfg["BLOCK_DV"], **precs)
    # 1. query side, reductions: dY, dk̃ (A1 path), dconv_w
    dy = torch.empty(bh, splits, m, dv_dim, device=dev, dtype=f32)
    dkl1 = torch.empty(bh, splits, m, D, device=dev, dtype=f32)
    dwt = torch.empty(bh, splits, ksize, device=dev, dtype=f32)
    dq = torch.empty(B, n, H, D, device=dev, dtype=q.dtype)
    _bwd_query_kernel[flat_grid(bh * splits)](
        q, v, dout, kl, y, ql, dq, dq, dy, dkl1, dwt, bh, n, H, m, D, dv_dim, pad, group, scale, ksize, per_split,
        splits, *_strides(q), *_strides(v), *_strides(dout), *_strides(dq),
        WRITE_DQ=False, **common, num_stages=stages, num_warps=_WIDE_WARPS)
    # 2. the m×m part in PyTorch
    dql2, dkl2, dwv = _pinv_backward(ql, kl, w, dy.sum(dim=1), pinv_iterations, mode, B, H)
    dkl = (dkl1.sum(dim=1) + dkl2).contiguous()
    rs = (dwv * w).sum(dim=-1).contiguous()
    # 3. key side: dk, dv, dq̃ (A3 path)
    dk = torch.empty(B, n, H, D, device=dev, dtype=k.dtype)
    dv = torch.empty(B, n, H, dv_dim, device=dev, dtype=f32 if armour else v.dtype)
    dql3 = torch.empty(bh, splits, m, D, device=dev, dtype=f32)
    _bwd_key_kernel[flat_grid(bh * splits)](
        k, v, dout, ql, lse, dwv.contiguous(), rs, dkl, weight, dk, dv, dql3,
        bh, n, H, m, D, dv_dim, pad, group, ksize, per_split, splits,
        *_strides(k), *_strides(v), *_strides(dout), *_strides(dk), *_strides(dv),
        HAS_CONV=has_conv, BLOCK_N=block_n, BLOCK_M=cfg["BLOCK_M"], BLOCK_D=cfg["BLOCK_D"],
        BLOCK_DV=cfg["BLOCK_DV"], **precs, num_stages=stages, num_warps=_WIDE_WARPS)
    dql = (dql2 + dql3.sum(dim=1)).contiguous()
    # 4. query side again: dq (+ dv when the query is the value)
    _bwd_query_kernel[flat_grid(bh * n_blocks)](
        q, v, dout, kl, y, dql, dv, dq, dy, dkl1, dwt, bh, n, H, m, D, dv_dim, pad, group, scale, ksize, 1,
        n_blocks, *_strides(q), *_strides(v), *_strides(dout), *_strides(dq),
        WRITE_DQ=True, **common, num_stages=1, num_warps=_WIDE_WARPS)
    dconv = None
    if has_conv:
        dconv = dwt.sum(dim=1).view(B, H, ksize).sum(dim=0).view(H, 1, ksize, 1).to(conv_weight.dtype)
    return dq, dk, (None if armour else dv), dconv
