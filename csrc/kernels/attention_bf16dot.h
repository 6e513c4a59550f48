// bf16 attention forward on AVX512-BF16 dot products (gemm_bf16dot.h). Included by
// isa_avx512bf16.cpp after attention_kernel.h, whose score, softmax and store helpers it reuses.
#pragma once

inline void forward_bf16dot_tasks(const AttentionArgs& a, int64_t begin, int64_t end) {
  using V = VecF;
  const int64_t Nq = a.Nq, Nk = a.Nk, Dk = a.Dk, Dv = a.Dv, H = a.H;
  const int64_t nqb = (Nq + kBlockQ - 1) / kBlockQ;
  const int64_t Dk2 = round_up(Dk, 2), Nkp = round_up(Nk, V::W), Dvp = round_up(Dv, V::W);
  const int64_t BK = round_up(min64(kBlockK, Nk), V::W);  // even, so P rows pair up
  Scratch<uint16_t> qs(kBlockQ * Dk2), kt2(Dk2 * Nkp), v2(Nkp * Dvp), pb(kBlockQ * BK);
  Scratch<float> s(kBlockQ * BK), o(kBlockQ * Dvp), m(kBlockQ), l(kBlockQ), diag(kBlockQ);
  const bool fused = fused_scores_apply<V>(a);
  int64_t packed = -1;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t qb = t % nqb, bh = t / nqb, b = bh / H, h = bh % H;
    if (bh != packed) {
      kt2.zero(Dk2 * Nkp);  // Kᵀ pairs: kt2[(d / 2) * 2 Nkp + 2 j + d % 2] = K[j, d]
      pack_pairs_t(a.k, b, h, Nk, Dk, kt2.p, Nkp);
      v2.zero(Nkp * Dvp);  // V pairs: v2[(j / 2) * 2 Dvp + 2 c + j % 2] = V[j, c]
      for (int p = 0, col = 0; p < a.n_parts; col += a.part_width[p], ++p)
        pack_value_pairs(a.part[p], b, h, Nk, a.part_width[p], v2.p, Dvp, col);
      packed = bh;
    }
    const int64_t i0 = qb * kBlockQ, nr = min64(kBlockQ, Nq - i0);
    pack_bf16_rows(a.q, b, h, i0, nr, Dk, qs.p, Dk2);
    reset_rows(nr, m.p, l.p, diag.p, o.p, Dvp);
    for (int64_t j0 = 0; j0 < Nk; j0 += kBlockK) {
      const int64_t bk = min64(kBlockK, Nk - j0), bkp = round_up(bk, V::W);
      gemm_with<Bf16DotKernel>(nr, bkp, Dk2 / 2, qs.p, Dk2, kt2.p + 2 * j0, 2 * Nkp, s.p, BK, false);
      if (fused) {
        fused_scores_softmax_update<V>(a, b, h, i0, nr, j0, bk, bkp, s.p, BK, m.p, l.p, o.p, Dvp);
      } else {
        finish_scores<V>(a, b, h, i0, nr, j0, bk, bkp, s.p, BK, diag.p);
        online_softmax_update<V>(nr, bkp, s.p, BK, m.p, l.p, o.p, Dvp);
      }
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t c = 0; c < bkp; c += V::W)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(pb.p + r * BK + c),
                              (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(s.p + r * BK + c)));
      gemm_with<Bf16DotKernel>(nr, Dvp, bkp / 2, pb.p, BK, v2.p + j0 * Dvp, 2 * Dvp, o.p, Dvp, true);
    }
    store_rows<bf16_t>(a, b, h, i0, nr, o.p, Dvp, m.p, l.p, diag.p);
  }
}

void forward_bf16dot(const AttentionArgs& a) {
  const int64_t nqb = (a.Nq + kBlockQ - 1) / kBlockQ;
  a.parallel_for(a.B * a.H * nqb, const_cast<AttentionArgs*>(&a), [](void* ctx, int64_t begin, int64_t end) {
    forward_bf16dot_tasks(*static_cast<const AttentionArgs*>(ctx), begin, end);
  });
}
