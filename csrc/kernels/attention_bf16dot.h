// bf16 attention forward on AVX512-BF16 dot products (vdpbf16ps: two bf16 products summed into
// each fp32 lane per instruction, twice the work of an fp32 FMA). Included by
// isa_avx512bf16.cpp after attention_kernel.h (its softmax, score and store helpers are reused).
//
// Layouts: a dot-product operand pairs two consecutive reduction indices in one 32-bit lane.
// A rows (Q rows, P rows) already have their reduction index contiguous, so a 32-bit broadcast
// of A[r][2k..2k+1] is the A operand; B is packed as pairs: B2[k/2][j][k%2], i.e. Kᵀ pairs two
// feature indices per key, V pairs two keys per value column. Scores, softmax and the output
// accumulator stay fp32; P is rounded to bf16 before P·V (as GPU FlashAttention does).
#pragma once

inline __m512bh bf16_pair_bcast(const uint16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return (__m512bh)_mm512_set1_epi32(v);
}

struct Bf16DotKernel {
  using S = float;
  using AT = uint16_t;
  using BT = uint16_t;
  static constexpr int W = 16, MR = 6, NV = 2;
  static const AT* a_rows(const AT* A, int64_t i, int64_t lda) { return A + i * lda; }
  static const BT* b_cols(const BT* B, int64_t j) { return B + 2 * j; }

  // K counts pairs; lda, ldb in bf16 elements.
  template <int R, int NV>
  static inline void block(int64_t K, const AT* A, int64_t lda, const BT* B, int64_t ldb, S* C, int64_t ldc,
                           bool accumulate) {
    __m512 c[R][NV];
    for (int r = 0; r < R; ++r)
      for (int n = 0; n < NV; ++n) c[r][n] = accumulate ? _mm512_loadu_ps(C + r * ldc + n * W) : _mm512_setzero_ps();
    for (int64_t kk = 0; kk < K; ++kk) {
      __m512bh b[NV];
      for (int n = 0; n < NV; ++n) b[n] = (__m512bh)_mm512_loadu_si512(B + kk * ldb + n * 2 * W);
      for (int r = 0; r < R; ++r) {
        const __m512bh a = bf16_pair_bcast(A + r * lda + 2 * kk);
        for (int n = 0; n < NV; ++n) c[r][n] = _mm512_dpbf16_ps(c[r][n], a, b[n]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int n = 0; n < NV; ++n) _mm512_storeu_ps(C + r * ldc + n * W, c[r][n]);
  }
};

inline uint16_t bf16_bits(const Strided4& t, int64_t b, int64_t n, int64_t h, int64_t d) {
  return (static_cast<const bf16_t*>(t.ptr) + b * t.sb + n * t.sn + h * t.sh + d * t.sd)->bits;
}

inline void forward_bf16dot_tasks(const AttentionArgs& a, int64_t begin, int64_t end) {
  using V = VecF;
  const int64_t Nq = a.Nq, Nk = a.Nk, Dk = a.Dk, Dv = a.Dv, H = a.H;
  const int64_t nqb = (Nq + kBlockQ - 1) / kBlockQ;
  const int64_t Dk2 = round_up(Dk, 2), Nkp = round_up(Nk, V::W), Dvp = round_up(Dv, V::W);
  const int64_t BK = round_up(min64(kBlockK, Nk), V::W);  // even, so P rows pair up
  Scratch<uint16_t> qs(kBlockQ * Dk2), kt2(Dk2 * Nkp), v2(Nkp * Dvp), pb(kBlockQ * BK);
  Scratch<float> s(kBlockQ * BK), o(kBlockQ * Dvp), m(kBlockQ), l(kBlockQ), diag(kBlockQ);
  int64_t packed = -1;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t qb = t % nqb, bh = t / nqb, b = bh / H, h = bh % H;
    if (bh != packed) {
      kt2.zero(Dk2 * Nkp);  // Kᵀ pairs: kt2[(d / 2) * 2 Nkp + 2 j + d % 2] = K[j, d]
      for (int64_t j = 0; j < Nk; ++j)
        for (int64_t d = 0; d < Dk; ++d) kt2.p[(d >> 1) * 2 * Nkp + 2 * j + (d & 1)] = bf16_bits(a.k, b, j, h, d);
      v2.zero(Nkp * Dvp);  // V pairs: v2[(j / 2) * 2 Dvp + 2 c + j % 2] = V[j, c]
      for (int p = 0, col = 0; p < a.n_parts; col += a.part_width[p], ++p)
        for (int64_t j = 0; j < Nk; ++j)
          for (int64_t c = 0; c < a.part_width[p]; ++c)
            v2.p[(j >> 1) * 2 * Dvp + 2 * (col + c) + (j & 1)] = bf16_bits(a.part[p], b, j, h, c);
      packed = bh;
    }
    const int64_t i0 = qb * kBlockQ, nr = min64(kBlockQ, Nq - i0);
    for (int64_t r = 0; r < nr; ++r) {
      qs.p[r * Dk2 + Dk2 - 1] = 0;  // odd Dk: the pad feature pairs with a zero
      for (int64_t d = 0; d < Dk; ++d) qs.p[r * Dk2 + d] = bf16_bits(a.q, b, i0 + r, h, d);
    }
    reset_rows(nr, m.p, l.p, diag.p, o.p, Dvp);
    for (int64_t j0 = 0; j0 < Nk; j0 += kBlockK) {
      const int64_t bk = min64(kBlockK, Nk - j0), bkp = round_up(bk, V::W);
      gemm_with<Bf16DotKernel>(nr, bkp, Dk2 / 2, qs.p, Dk2, kt2.p + 2 * j0, 2 * Nkp, s.p, BK, false);
      finish_scores<V>(a, b, h, i0, nr, j0, bk, bkp, s.p, BK, diag.p);
      online_softmax_update<V>(nr, bkp, s.p, BK, m.p, l.p, o.p, Dvp);
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
