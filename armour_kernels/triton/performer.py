"""Fused Performer (FAVOR+) attention kernels, forward and backward (SPEC §5).

Per (batch, head), with u = dn·x·Pᵀ (dn = d^-1/4) and the features φ computed on chip:
  softmax kernel: φ(x) = exp(u − ‖x‖²dn²/2 − stab) + 1e-4   (query stab: row max of u;
                  key stab M: max of u per (batch, head) [clean] or over everything [seed])
  relu kernel:    φ(x) = relu(u) + 1e-3
  out = φ(q)·S / (φ(q)·z),   S = Σₙ φ(kₙ) vₙᵀ (m × dv),   z = Σₙ φ(kₙ) (m)

Kernels (none writes φ(q) or φ(k), the n×m matrices, to memory):
  _key_max_kernel      key stabiliser pre-pass: max of u per (batch·head, token block)
  _context_kernel      S and z in one pass over the keys (split over programs, summed on host)
  _output_kernel       φ(q)·S / φ(q)·z per query block
  _bwd_query_kernel    dq and the reductions dS = Σ φ(q)ᵀ dO/den, dz = −Σ φ(q) (dO·out)/den
  _bwd_key_kernel      dk, dv (dv folded into dq for value="q"), seed-mode dM partials

Gradient of a feature map, with G = ∂L/∂φ and E = ∂φ/∂u (φ − 1e-4 for softmax, [u > 0] for relu):
  dx = dn·(G∘E)·P − dn²·rowsum(G∘E)·x   (the second term only for softmax, from ‖x‖²).
In seed mode the key stabiliser is not detached: dM = −Σ G∘E over everything, routed by the
launcher to the single (token, feature) that holds the maximum.

Every dot runs on fp32 operands: exact IEEE fp32 for fp32 inputs, tf32 for 16-bit inputs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _interpreter_compat  # noqa: F401  (NumPy 2.4 vs the Triton interpreter)

SOFTMAX_EPS = 1e-4
RELU_EPS = 1e-3
_PROGRAMS_TARGET = 512  # programs per reduction launch before splitting stops paying


@triton.jit
def _load_rows(ptr, row0, n, stride_n, stride_d, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """A (BLOCK_N, BLOCK_D) fp32 tile of rows row0… of one (batch, head); zeros outside."""
    rows = row0 + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n) & (cols[None, :] < D)
    return tl.load(ptr + rows[:, None] * stride_n + cols[None, :] * stride_d, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _project(x, proj, dn, PRECISION: tl.constexpr):
    """u = (dn·x)·Pᵀ, fp32 (BLOCK_N, BLOCK_M)."""
    return tl.dot(x, tl.trans(proj), input_precision=PRECISION) * dn


@triton.jit
def _features(x, u, dn, stab, valid, SOFTMAX: tl.constexpr):
    """φ from the projection u; 0 where `valid` is false (padded features or tokens)."""
    if SOFTMAX:
        diag = tl.sum(x * x, axis=1) * (dn * dn * 0.5)
        phi = tl.exp(u - diag[:, None] - stab) + 1e-4
    else:
        phi = tl.maximum(u, 0.0) + 1e-3
    return tl.where(valid, phi, 0.0)


@triton.jit
def _feature_grad(g, x, u, phi, proj, dn, valid, SOFTMAX: tl.constexpr, PRECISION: tl.constexpr):
    """dx from G = ∂L/∂φ (see the module docstring); also returns Σ G∘E per row."""
    if SOFTMAX:
        ge = tl.where(valid, g * (phi - 1e-4), 0.0)
        gsum = tl.sum(ge, axis=1)
        dx = tl.dot(ge, proj, input_precision=PRECISION) * dn - (dn * dn) * gsum[:, None] * x
    else:
        ge = tl.where(valid & (u > 0), g, 0.0)
        gsum = tl.sum(ge, axis=1)
        dx = tl.dot(ge, proj, input_precision=PRECISION) * dn
    return dx, gsum


@triton.jit
def _load_proj(p_ptr, m, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    feats = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (feats[:, None] < m) & (cols[None, :] < D)
    return tl.load(p_ptr + feats[:, None] * D + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _key_max_kernel(k_ptr, p_ptr, part_ptr, n, H, m, D, dn,
                    skb, skn, skh, skd,
                    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                    PRECISION: tl.constexpr):
    bh = tl.program_id(0)
    blk = tl.program_id(1)
    b, h = bh // H, bh % H
    k = _load_rows(k_ptr + b * skb + h * skh, blk * BLOCK_N, n, skn, skd, D, BLOCK_N, BLOCK_D)
    proj = _load_proj(p_ptr, m, D, BLOCK_M, BLOCK_D)
    u = _project(k, proj, dn, PRECISION)
    rows = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    feats = tl.arange(0, BLOCK_M)
    valid = (rows[:, None] < n) & (feats[None, :] < m)
    tl.store(part_ptr + bh * tl.num_programs(1) + blk, tl.max(tl.max(tl.where(valid, u, float("-inf")), axis=1), axis=0))


@triton.jit
def _context_kernel(k_ptr, v_ptr, p_ptr, stab_ptr, ctx_ptr, ksum_ptr, n, H, m, D, DV, dn, blocks_per_split,
                    skb, skn, skh, skd, svb, svn, svh, svd,
                    SOFTMAX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b, h = bh // H, bh % H
    proj = _load_proj(p_ptr, m, D, BLOCK_M, BLOCK_D)
    stab = tl.load(stab_ptr + bh) if SOFTMAX else 0.0
    feats = tl.arange(0, BLOCK_M)
    ctx = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    ksum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for i in range(0, blocks_per_split):
        row0 = (split * blocks_per_split + i) * BLOCK_N
        k = _load_rows(k_ptr + b * skb + h * skh, row0, n, skn, skd, D, BLOCK_N, BLOCK_D)
        v = _load_rows(v_ptr + b * svb + h * svh, row0, n, svn, svd, DV, BLOCK_N, BLOCK_DV)
        rows = row0 + tl.arange(0, BLOCK_N)
        valid = (rows[:, None] < n) & (feats[None, :] < m)
        phi = _features(k, _project(k, proj, dn, PRECISION), dn, stab, valid, SOFTMAX)
        ctx += tl.dot(tl.trans(phi), v, input_precision=PRECISION)
        ksum += tl.sum(phi, axis=0)
    part = bh * tl.num_programs(1) + split
    dvs = tl.arange(0, BLOCK_DV)
    tl.store(ctx_ptr + part * BLOCK_M * BLOCK_DV + feats[:, None] * BLOCK_DV + dvs[None, :], ctx)
    tl.store(ksum_ptr + part * BLOCK_M + feats, ksum)


@triton.jit
def _load_reductions(ctx_ptr, ksum_ptr, bh, m, DV, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    """S (m, dv) and z (m) of one (batch·head), fp32, zero-padded to the block sizes."""
    feats = tl.arange(0, BLOCK_M)
    dvs = tl.arange(0, BLOCK_DV)
    ctx = tl.load(ctx_ptr + bh * m * DV + feats[:, None] * DV + dvs[None, :],
                  mask=(feats[:, None] < m) & (dvs[None, :] < DV), other=0.0)
    ksum = tl.load(ksum_ptr + bh * m + feats, mask=feats < m, other=0.0)
    return ctx, ksum


@triton.jit
def _query_block(q_ptr, p_ptr, ctx_ptr, ksum_ptr, bh, row0, n, m, D, DV, dn, sqn, sqd,
                 SOFTMAX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """Recompute everything one query block needs: q, P, u, φ(q), S, z, the validity mask, φ(q)·z."""
    q = _load_rows(q_ptr, row0, n, sqn, sqd, D, BLOCK_N, BLOCK_D)
    proj = _load_proj(p_ptr, m, D, BLOCK_M, BLOCK_D)
    u = _project(q, proj, dn, PRECISION)
    feats = tl.arange(0, BLOCK_M)
    rows = row0 + tl.arange(0, BLOCK_N)
    valid = (rows[:, None] < n) & (feats[None, :] < m)
    stab = tl.max(tl.where(valid, u, float("-inf")), axis=1)[:, None] if SOFTMAX else 0.0
    stab = tl.where(rows[:, None] < n, stab, 0.0)  # padded rows: keep them finite
    phi = _features(q, u, dn, stab, valid, SOFTMAX)
    dvs = tl.arange(0, BLOCK_DV)
    ctx, ksum = _load_reductions(ctx_ptr, ksum_ptr, bh, m, DV, BLOCK_M, BLOCK_DV)
    den = tl.sum(phi * ksum[None, :], axis=1)
    den = tl.where(rows < n, den, 1.0)
    return q, proj, u, phi, ctx, ksum, valid, den


@triton.jit
def _output_kernel(q_ptr, p_ptr, ctx_ptr, ksum_ptr, out_ptr, n, H, m, D, DV, dn,
                   sqb, sqn, sqh, sqd, sob, son, soh, sod,
                   SOFTMAX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(0)
    row0 = tl.program_id(1) * BLOCK_N
    b, h = bh // H, bh % H
    q, proj, u, phi, ctx, ksum, valid, den = _query_block(
        q_ptr + b * sqb + h * sqh, p_ptr, ctx_ptr, ksum_ptr, bh, row0, n, m, D, DV, dn, sqn, sqd,
        SOFTMAX, BLOCK_N, BLOCK_M, BLOCK_D, BLOCK_DV, PRECISION)
    out = tl.dot(phi, ctx, input_precision=PRECISION) / den[:, None]
    rows = row0 + tl.arange(0, BLOCK_N)
    dvs = tl.arange(0, BLOCK_DV)
    tl.store(out_ptr + b * sob + h * soh + rows[:, None] * son + dvs[None, :] * sod,
             out.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < n) & (dvs[None, :] < DV))


@triton.jit
def _bwd_query_kernel(q_ptr, p_ptr, ctx_ptr, ksum_ptr, do_ptr, dq_ptr, dctx_ptr, dksum_ptr,
                      n, H, m, D, DV, dn, blocks_per_split,
                      sqb, sqn, sqh, sqd, sdob, sdon, sdoh, sdod,
                      sdqb, sdqn, sdqh, sdqd,
                      SOFTMAX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b, h = bh // H, bh % H
    feats = tl.arange(0, BLOCK_M)
    dvs = tl.arange(0, BLOCK_DV)
    dcols = tl.arange(0, BLOCK_D)
    dctx = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    dksum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for i in range(0, blocks_per_split):
        row0 = (split * blocks_per_split + i) * BLOCK_N
        q, proj, u, phi, ctx, ksum, valid, den = _query_block(
            q_ptr + b * sqb + h * sqh, p_ptr, ctx_ptr, ksum_ptr, bh, row0, n, m, D, DV, dn, sqn, sqd,
            SOFTMAX, BLOCK_N, BLOCK_M, BLOCK_D, BLOCK_DV, PRECISION)
        # out recomputed in fp32, not read back: a 16-bit stored out would spoil the
        # cancellation in G = (dO·Sᵀ − (dO·out)·z)/den.
        out = tl.dot(phi, ctx, input_precision=PRECISION) / den[:, None]
        do = _load_rows(do_ptr + b * sdob + h * sdoh, row0, n, sdon, sdod, DV, BLOCK_N, BLOCK_DV)
        do_den = do / den[:, None]
        delta = tl.sum(do_den * out, axis=1)  # (dO·out)/den
        g = tl.dot(do_den, tl.trans(ctx), input_precision=PRECISION) - delta[:, None] * ksum[None, :]
        dq, _ = _feature_grad(g, q, u, phi, proj, dn, valid, SOFTMAX, PRECISION)
        rows = row0 + tl.arange(0, BLOCK_N)
        tl.store(dq_ptr + b * sdqb + h * sdqh + rows[:, None] * sdqn + dcols[None, :] * sdqd,
                 dq.to(dq_ptr.dtype.element_ty), mask=(rows[:, None] < n) & (dcols[None, :] < D))
        dctx += tl.dot(tl.trans(phi), do_den, input_precision=PRECISION)
        dksum -= tl.sum(phi * delta[:, None], axis=0)
    part = bh * tl.num_programs(1) + split
    tl.store(dctx_ptr + part * BLOCK_M * BLOCK_DV + feats[:, None] * BLOCK_DV + dvs[None, :], dctx)
    tl.store(dksum_ptr + part * BLOCK_M + feats, dksum)


@triton.jit
def _bwd_key_kernel(k_ptr, v_ptr, p_ptr, stab_ptr, dctx_ptr, dksum_ptr, dk_ptr, dv_ptr, dstab_ptr,
                    n, H, m, D, DV, dn,
                    skb, skn, skh, skd, svb, svn, svh, svd,
                    sdkb, sdkn, sdkh, sdkd, sdvb, sdvn, sdvh, sdvd,
                    SOFTMAX: tl.constexpr, ACCUMULATE_DV: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """ACCUMULATE_DV (value="q"): dv_ptr is dq, already holding the query-path gradient; add to it."""
    bh = tl.program_id(0)
    blk = tl.program_id(1)
    b, h = bh // H, bh % H
    row0 = blk * BLOCK_N
    rows = row0 + tl.arange(0, BLOCK_N)
    feats = tl.arange(0, BLOCK_M)
    dvs = tl.arange(0, BLOCK_DV)
    dcols = tl.arange(0, BLOCK_D)
    k = _load_rows(k_ptr + b * skb + h * skh, row0, n, skn, skd, D, BLOCK_N, BLOCK_D)
    v = _load_rows(v_ptr + b * svb + h * svh, row0, n, svn, svd, DV, BLOCK_N, BLOCK_DV)
    proj = _load_proj(p_ptr, m, D, BLOCK_M, BLOCK_D)
    stab = tl.load(stab_ptr + bh) if SOFTMAX else 0.0
    valid = (rows[:, None] < n) & (feats[None, :] < m)
    u = _project(k, proj, dn, PRECISION)
    phi = _features(k, u, dn, stab, valid, SOFTMAX)
    dctx, dksum = _load_reductions(dctx_ptr, dksum_ptr, bh, m, DV, BLOCK_M, BLOCK_DV)
    g = tl.dot(v, tl.trans(dctx), input_precision=PRECISION) + dksum[None, :]
    dk, gsum = _feature_grad(g, k, u, phi, proj, dn, valid, SOFTMAX, PRECISION)
    tl.store(dk_ptr + b * sdkb + h * sdkh + rows[:, None] * sdkn + dcols[None, :] * sdkd,
             dk.to(dk_ptr.dtype.element_ty), mask=(rows[:, None] < n) & (dcols[None, :] < D))
    dv = tl.dot(phi, dctx, input_precision=PRECISION)
    dv_ptrs = dv_ptr + b * sdvb + h * sdvh + rows[:, None] * sdvn + dvs[None, :] * sdvd
    dv_mask = (rows[:, None] < n) & (dvs[None, :] < DV)
    if ACCUMULATE_DV:
        dv += tl.load(dv_ptrs, mask=dv_mask, other=0.0).to(tl.float32)
    tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty), mask=dv_mask)
    # ∂L/∂M for the seed mode's attached stabiliser: φ depends on −M, so dM = −Σ G∘E.
    tl.store(dstab_ptr + bh * tl.num_programs(1) + blk, -tl.sum(gsum, axis=0))


# ----------------------------------------------------------------------------- launchers


def _config(n, m, d, dv, dtype):
    block_m = max(16, triton.next_power_of_2(m))
    block_d = max(16, triton.next_power_of_2(d))
    block_dv = max(16, triton.next_power_of_2(dv))
    block_n = 64 if block_m <= 128 else 32
    block_n = min(block_n, max(16, triton.next_power_of_2(n)))
    precision = "ieee" if dtype == torch.float32 else "tf32"
    warps = 4 if block_m <= 64 else 8
    return dict(BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_DV=block_dv, PRECISION=precision), warps


def _splits(n_blocks, bh):
    """How many programs share one (batch, head)'s reduction over the tokens."""
    per_split = triton.cdiv(n_blocks, max(1, min(n_blocks, triton.cdiv(_PROGRAMS_TARGET, bh))))
    return triton.cdiv(n_blocks, per_split), per_split


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _key_block_maxima(k, proj, dn, cfg, warps):
    """Pre-pass: max of u per (batch·head, token block), shape (B·H, n_blocks)."""
    B, n, H, D = k.shape
    n_blocks = triton.cdiv(n, cfg["BLOCK_N"])
    part = torch.empty(B * H, n_blocks, device=k.device, dtype=torch.float32)
    _key_max_kernel[(B * H, n_blocks)](k, proj, part, n, H, proj.shape[0], D, dn, *_strides(k),
                                       BLOCK_N=cfg["BLOCK_N"], BLOCK_M=cfg["BLOCK_M"], BLOCK_D=cfg["BLOCK_D"],
                                       PRECISION=cfg["PRECISION"], num_warps=warps)
    return part


def _key_stabiliser(k, proj, dn, mode, cfg, warps):
    """The key stabiliser M per (batch·head) (clean) or one global M (seed), as a (B·H,) vector."""
    stab = _key_block_maxima(k, proj, dn, cfg, warps).amax(dim=1)
    if mode == "seed":
        stab = stab.amax().expand(stab.shape[0]).contiguous()
    return stab


def _context(k, v, proj, stab, dn, softmax, cfg, warps):
    B, n, H, D = k.shape
    bh = B * H
    n_blocks = triton.cdiv(n, cfg["BLOCK_N"])
    splits, per_split = _splits(n_blocks, bh)
    ctx = torch.empty(bh, splits, cfg["BLOCK_M"], cfg["BLOCK_DV"], device=k.device, dtype=torch.float32)
    ksum = torch.empty(bh, splits, cfg["BLOCK_M"], device=k.device, dtype=torch.float32)
    _context_kernel[(bh, splits)](k, v, proj, stab, ctx, ksum, n, H, proj.shape[0], D, v.shape[3], dn, per_split,
                                  *_strides(k), *_strides(v), SOFTMAX=softmax, **cfg, num_warps=warps)
    m, dv = proj.shape[0], v.shape[3]
    return ctx.sum(dim=1)[:, :m, :dv].contiguous(), ksum.sum(dim=1)[:, :m].contiguous()


def _prepare(q, projection, kernel):
    proj = projection.to(device=q.device, dtype=torch.float32).contiguous()
    dn = q.shape[-1] ** -0.25
    return proj, dn, kernel == "softmax"


def performer_forward(q, k, v, projection, *, kernel, mode, value):
    """q, k (B, N, H, D), v (B, N, H, Dv) or None (value="q"), any strides; projection (m, D).

    Returns (out (B, N, H, Dv) contiguous in q's dtype, ctx (B·H, BM, BDV) fp32, ksum (B·H, BM) fp32,
    stab (B·H,) fp32): the small reductions the backward reuses.
    """
    v = q if value == "q" else v
    B, n, H, D = q.shape
    proj, dn, softmax = _prepare(q, projection, kernel)
    cfg, warps = _config(max(n, k.shape[1]), proj.shape[0], D, v.shape[3], q.dtype)
    stab = (_key_stabiliser(k, proj, dn, mode, cfg, warps) if softmax
            else torch.zeros(B * H, device=q.device, dtype=torch.float32))
    ctx, ksum = _context(k, v, proj, stab, dn, softmax, cfg, warps)
    out = torch.empty(B, n, H, v.shape[3], device=q.device, dtype=q.dtype)
    grid = (B * H, triton.cdiv(n, cfg["BLOCK_N"]))
    _output_kernel[grid](q, proj, ctx, ksum, out, n, H, proj.shape[0], D, v.shape[3], dn,
                         *_strides(q), *_strides(out), SOFTMAX=softmax, **cfg, num_warps=warps)
    return out, ctx, ksum, stab


def _seed_stabiliser_grad(k, proj, dn, dstab, dk, cfg, warps):
    """Seed mode: M = max of u over the whole tensor is attached; send dM = Σ dstab to its argmax.

    The block maxima pre-pass finds the (batch·head, token block) holding the maximum; u is
    recomputed for that one block in PyTorch to find the (token, feature) — the element
    torch.max() routes the gradient to (up to exact ties).
    """
    B, n, H, D = k.shape
    part = _key_block_maxima(k, proj, dn, cfg, warps)
    bh, blk = divmod(int(part.argmax()), part.shape[1])
    b, h = divmod(bh, H)
    rows = slice(blk * cfg["BLOCK_N"], min(n, (blk + 1) * cfg["BLOCK_N"]))
    u = (k[b, rows, h].float() @ proj.T) * dn
    token, feat = divmod(int(u.argmax()), proj.shape[0])
    dk[b, rows.start + token, h] += dstab.sum() * dn * proj[feat]


def performer_backward(dout, q, k, v, projection, ctx, ksum, stab, *, kernel, mode, value):
    """Gradients (dq, dk, dv) of performer_forward; dv is None for value="q" (folded into dq)."""
    armour = value == "q"
    v = q if armour else v
    B, n, H, D = q.shape
    nk, DV = k.shape[1], v.shape[3]
    proj, dn, softmax = _prepare(q, projection, kernel)
    cfg, warps = _config(max(n, nk), proj.shape[0], D, DV, q.dtype)
    bh = B * H
    n_blocks = triton.cdiv(n, cfg["BLOCK_N"])
    splits, per_split = _splits(n_blocks, bh)
    # value="q": dq collects two gradients, so it is accumulated in fp32 and cast at the end.
    dq = torch.empty(B, n, H, D, device=q.device, dtype=torch.float32 if armour else q.dtype)
    dctx = torch.empty(bh, splits, cfg["BLOCK_M"], cfg["BLOCK_DV"], device=q.device, dtype=torch.float32)
    dksum = torch.empty(bh, splits, cfg["BLOCK_M"], device=q.device, dtype=torch.float32)
    _bwd_query_kernel[(bh, splits)](q, proj, ctx, ksum, dout, dq, dctx, dksum,
                                    n, H, proj.shape[0], D, DV, dn, per_split,
                                    *_strides(q), *_strides(dout), *_strides(dq),
                                    SOFTMAX=softmax, **cfg, num_warps=warps)
    m = proj.shape[0]
    dctx, dksum = dctx.sum(dim=1)[:, :m, :DV].contiguous(), dksum.sum(dim=1)[:, :m].contiguous()
    k_blocks = triton.cdiv(nk, cfg["BLOCK_N"])
    dk = torch.empty(B, nk, H, D, device=q.device, dtype=torch.float32 if mode == "seed" else k.dtype)
    dv = dq if armour else torch.empty(B, nk, H, DV, device=q.device, dtype=v.dtype)
    dstab = torch.empty(bh, k_blocks, device=q.device, dtype=torch.float32)
    _bwd_key_kernel[(bh, k_blocks)](k, v, proj, stab, dctx, dksum, dk, dv, dstab, nk, H, proj.shape[0], D, DV, dn,
                                    *_strides(k), *_strides(v), *_strides(dk), *_strides(dv),
                                    SOFTMAX=softmax, ACCUMULATE_DV=armour, **cfg, num_warps=warps)
    if softmax and mode == "seed":
        _seed_stabiliser_grad(k, proj, dn, dstab, dk, cfg, warps)
    return dq.to(q.dtype), dk.to(k.dtype), (None if armour else dv)
