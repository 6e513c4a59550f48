// Nyström attention forward on CPU (docs/nystrom.md), fused like the Triton kernels. Per (b, h):
//   A. landmarks q̃ (scaled), k̃ (means over groups of l = padded_n / m tokens, the front padding
//      counted as zero rows without being stored), A2 = softmax(q̃k̃ᵀ) and its max row / column
//      abs-sums (seed mode: maxima over the whole batch, reduced on the host thread);
//   B. Z = pinv(A2) (Razavi iterations, fp32), W = A3·v as an online softmax over key blocks
//      (A3 is never stored; lse3 kept), Y = Z·W;
//   C. per (b, h, block of rows): out = softmax(q k̃ᵀ)·Y + the depthwise residual conv of v.
// (A1 Z)(A3 v) = A1 (Z W): only the m×m and m×Dv products are ever formed.
// Included inside armour::<ISA> after linear_util.h. fp32 only (the host converts bf16 / fp16).
#pragma once

namespace lin {

struct NystromPlan {
  const NystromArgs* a;
  int64_t Np, pad, group, Mp, Dp, Dvp;
  float scale;
  const float* denom;  // (B·H,) pinv scaling, filled between sweeps A and B
};

// Row r of the padded sequence (zeros for the first `pad` rows) into dst[0, len), scaled.
inline void load_padded(const NystromPlan& pl, const Strided4& t, int64_t b, int64_t r, int64_t h, int64_t len,
                        float scale, float* dst) {
  if (r < pl.pad) {
    std::memset(dst, 0, sizeof(float) * len);
  } else {
    load_row(t, b, r - pl.pad, h, len, scale, dst);
  }
}

// In place softmax of x[0, len); returns the log of the sum of exponentials (natural log).
inline float softmax_inplace(float* x, int64_t len) {
  const float mx = row_max(x, len);
  float sum = 0.f;
  for (int64_t j = 0; j < len; ++j) {
    x[j] = std::exp(x[j] - mx);
    sum += x[j];
  }
  const float inv = 1.f / sum;
  for (int64_t j = 0; j < len; ++j) x[j] *= inv;
  return mx + std::log(sum);
}

inline void landmark_body(void* ctx, int64_t begin, int64_t end) {
  const NystromPlan& pl = *static_cast<NystromPlan*>(ctx);
  const NystromArgs& a = *pl.a;
  const int64_t M = a.M;
  Buf row(pl.Dp), col(M);
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / a.H, h = bh % a.H;
    float* ql = a.ql + bh * M * a.D;
    float* kl = a.kl + bh * M * a.D;
    std::memset(ql, 0, sizeof(float) * M * a.D);
    std::memset(kl, 0, sizeof(float) * M * a.D);
    for (int64_t r = pl.pad; r < pl.Np; ++r) {
      const int64_t i = r / pl.group;
      load_row(a.q, b, r - pl.pad, h, a.D, pl.scale / pl.group, row.p);
      for (int64_t d = 0; d < a.D; ++d) ql[i * a.D + d] += row.p[d];
      load_row(a.k, b, r - pl.pad, h, a.D, 1.f / pl.group, row.p);
      for (int64_t d = 0; d < a.D; ++d) kl[i * a.D + d] += row.p[d];
    }
    float* a2 = a.a2 + bh * M * M;
    float row_abs = 0.f;
    std::memset(col.p, 0, sizeof(float) * M);
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < M; ++j) {
        float s = 0.f;
        for (int64_t d = 0; d < a.D; ++d) s += ql[i * a.D + d] * kl[j * a.D + d];
        a2[i * M + j] = s;
      }
      softmax_inplace(a2 + i * M, M);
      float rs = 0.f;
      for (int64_t j = 0; j < M; ++j) {
        rs += std::fabs(a2[i * M + j]);
        col.p[j] += std::fabs(a2[i * M + j]);
      }
      row_abs = rs > row_abs ? rs : row_abs;
    }
    a.absmax[2 * bh] = row_abs;
    a.absmax[2 * bh + 1] = row_max(col.p, M);
  }
}

// Z (M × Mp) = pinv(A2) by Razavi iterations, Z₀ = A2ᵀ / denom.
inline void razavi_pinv(const NystromPlan& pl, const float* a2, float denom, float* z, float* az, float* t, float* u,
                        float* ap) {
  const int64_t M = pl.a->M, Mp = pl.Mp;
  std::memset(ap, 0, sizeof(float) * M * Mp);
  std::memset(z, 0, sizeof(float) * M * Mp);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < M; ++j) {
      ap[i * Mp + j] = a2[i * M + j];
      z[j * Mp + i] = a2[i * M + j] / denom;
    }
  auto add_diag = [&](float c, float* x) {  // x ← cI − x
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < Mp; ++j) x[i * Mp + j] = (i == j ? c : 0.f) - x[i * Mp + j];
  };
  for (int it = 0; it < pl.a->iterations; ++it) {
    matmul(ap, Mp, z, Mp, az, Mp, M, M, Mp);  // AZ
    std::memcpy(t, az, sizeof(float) * M * Mp);
    add_diag(7.f, t);                         // 7I − AZ
    matmul(az, Mp, t, Mp, u, Mp, M, M, Mp);
    add_diag(15.f, u);                        // 15I − AZ(7I − AZ)
    matmul(az, Mp, u, Mp, t, Mp, M, M, Mp);
    add_diag(13.f, t);                        // 13I − AZ(15I − …)
    matmul(z, Mp, t, Mp, u, Mp, M, M, Mp);
    for (int64_t i = 0; i < M * Mp; ++i) z[i] = 0.25f * u[i];
  }
}

constexpr int64_t kNysBlockK = 64;

inline void landmark_value_body(void* ctx, int64_t begin, int64_t end) {
  const NystromPlan& pl = *static_cast<NystromPlan*>(ctx);
  const NystromArgs& a = *pl.a;
  const int64_t M = a.M, Mp = pl.Mp, Dvp = pl.Dvp;
  constexpr int64_t BK = kNysBlockK;
  Buf z(M * Mp), az(M * Mp), t(M * Mp), u(M * Mp), ap(M * Mp);
  Buf row(pl.Dp), kt(a.D * BK), vb(BK * Dvp), s(BK), w(M * Dvp), y(M * Dvp), mx(M), sum(M);
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / a.H, h = bh % a.H;
    const float* ql = a.ql + bh * M * a.D;
    razavi_pinv(pl, a.a2 + bh * M * M, pl.denom[bh], z.p, az.p, t.p, u.p, ap.p);
    for (int64_t i = 0; i < M; ++i) {
      mx.p[i] = -INFINITY;
      sum.p[i] = 0.f;
    }
    std::memset(w.p, 0, sizeof(float) * M * Dvp);
    // W = softmax(q̃ kᵀ) v over the padded keys (zero rows score 0 and add nothing to W), online
    // over blocks of BK keys: kt holds the block transposed (D × BK), vb its values (BK × Dvp).
    for (int64_t r0 = 0; r0 < pl.Np; r0 += BK) {
      const int64_t nb = pl.Np - r0 < BK ? pl.Np - r0 : BK;
      std::memset(kt.p, 0, sizeof(float) * a.D * BK);
      for (int64_t r = 0; r < nb; ++r) {
        load_padded(pl, a.k, b, r0 + r, h, a.D, 1.f, row.p);
        for (int64_t d = 0; d < a.D; ++d) kt.p[d * BK + r] = row.p[d];
        load_padded(pl, a.v, b, r0 + r, h, a.Dv, 1.f, vb.p + r * Dvp);
      }
      for (int64_t i = 0; i < M; ++i) {
        row_gemv(ql + i * a.D, a.D, kt.p, BK, BK, s.p, false);
        for (int64_t r = nb; r < BK; ++r) s.p[r] = -INFINITY;
        const float bm = row_max(s.p, nb);
        const float m_new = bm > mx.p[i] ? bm : mx.p[i];
        const VecF shift = VecF::set1(m_new);
        VecF l = VecF::zero();
        for (int64_t r = 0; r < BK; r += VecF::W) {
          const VecF p = vexp(VecF::load(s.p + r) - shift);
          p.store(s.p + r);
          l = l + p;
        }
        const float alpha = std::exp(mx.p[i] - m_new);  // exp(-inf) = 0 on the first block
        float* wi = w.p + i * Dvp;
        scale_inplace(alpha, wi, Dvp);
        row_gemv(s.p, nb, vb.p, Dvp, Dvp, wi, true);
        sum.p[i] = sum.p[i] * alpha + hsum(l);
        mx.p[i] = m_new;
      }
    }
    for (int64_t i = 0; i < M; ++i) {
      scale_inplace(1.f / sum.p[i], w.p + i * Dvp, Dvp);
      a.lse[bh * M + i] = mx.p[i] + std::log(sum.p[i]);
      std::memcpy(a.w + (bh * M + i) * a.Dv, w.p + i * Dvp, sizeof(float) * a.Dv);
    }
    matmul(z.p, Mp, w.p, Dvp, y.p, Dvp, M, M, Dvp);  // Y = Z·W
    for (int64_t i = 0; i < M; ++i) std::memcpy(a.y + (bh * M + i) * a.Dv, y.p + i * Dvp, sizeof(float) * a.Dv);
  }
}

constexpr int64_t kNysBlockQ = 64;

inline void nystrom_output_body(void* ctx, int64_t begin, int64_t end) {
  const NystromPlan& pl = *static_cast<NystromPlan*>(ctx);
  const NystromArgs& a = *pl.a;
  const int64_t M = a.M, Mp = pl.Mp, Dvp = pl.Dvp, half = a.K / 2;
  const int64_t blocks = (a.N + kNysBlockQ - 1) / kNysBlockQ;
  // klt: k̃ᵀ (D × Mp); yp: Y (M × Dvp); vwin: the value rows the block's conv taps reach (zeros outside).
  Buf klt(a.D * Mp), yp(M * Dvp), x(pl.Dp), s(Mp), acc(Dvp), vwin((kNysBlockQ + a.K) * Dvp);
  int64_t loaded = -1;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t bh = task / blocks, blk = task % blocks, b = bh / a.H, h = bh % a.H;
    if (bh != loaded) {
      for (int64_t i = 0; i < M; ++i) {
        for (int64_t d = 0; d < a.D; ++d) klt.p[d * Mp + i] = a.kl[(bh * M + i) * a.D + d];
        std::memcpy(yp.p + i * Dvp, a.y + (bh * M + i) * a.Dv, sizeof(float) * a.Dv);
      }
      loaded = bh;
    }
    const int64_t n0 = blk * kNysBlockQ;
    const int64_t n_end = n0 + kNysBlockQ < a.N ? n0 + kNysBlockQ : a.N;
    if (a.conv) {
      for (int64_t src = n0 - half; src < n_end + half; ++src) {
        float* dst = vwin.p + (src - n0 + half) * Dvp;
        if (src < 0 || src >= a.N) {
          std::memset(dst, 0, sizeof(float) * Dvp);
        } else {
          load_row(a.v, b, src, h, a.Dv, 1.f, dst);
        }
      }
    }
    for (int64_t n = n0; n < n_end; ++n) {
      load_row(a.q, b, n, h, a.D, pl.scale, x.p);
      row_gemv(x.p, a.D, klt.p, Mp, Mp, s.p, false);
      softmax_row(s.p, M, Mp);
      row_gemv(s.p, M, yp.p, Dvp, Dvp, acc.p, false);
      // residual depthwise conv along the sequence: taps × the window rows n − half … n + half
      if (a.conv) row_gemv(a.conv + h * a.K, a.K, vwin.p + (n - n0) * Dvp, Dvp, Dvp, acc.p, true);
      std::memcpy(a.out + ((b * a.N + n) * a.H + h) * a.Dv, acc.p, sizeof(float) * a.Dv);
    }
  }
}

}  // namespace lin

inline void nystrom_forward(const NystromArgs& a) {
  lin::NystromPlan pl;
  pl.a = &a;
  pl.Np = lin::up(a.N, a.M);
  pl.pad = pl.Np - a.N;
  pl.group = pl.Np / a.M;
  pl.Mp = lin::up(a.M, VecF::W);
  pl.Dp = lin::up(a.D, VecF::W);
  pl.Dvp = lin::up(a.Dv, VecF::W);
  pl.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(a.D)));
  const int64_t BH = a.B * a.H;
  a.parallel_for(BH, &pl, lin::landmark_body);
  lin::Buf denom(BH);
  if (a.seed) {
    float rmax = 0.f, cmax = 0.f;
    for (int64_t i = 0; i < BH; ++i) {
      rmax = a.absmax[2 * i] > rmax ? a.absmax[2 * i] : rmax;
      cmax = a.absmax[2 * i + 1] > cmax ? a.absmax[2 * i + 1] : cmax;
    }
    for (int64_t i = 0; i < BH; ++i) denom.p[i] = rmax * cmax;
  } else {
    for (int64_t i = 0; i < BH; ++i) denom.p[i] = a.absmax[2 * i] * a.absmax[2 * i + 1];
  }
  pl.denom = denom.p;
  a.parallel_for(BH, &pl, lin::landmark_value_body);
  a.parallel_for(BH * ((a.N + lin::kNysBlockQ - 1) / lin::kNysBlockQ), &pl, lin::nystrom_output_body);
}
