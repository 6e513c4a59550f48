// The AVX512-BF16 dot-product GEMM micro-kernel (vdpbf16ps: two bf16 products summed into each
// fp32 lane per instruction, twice the work of an fp32 FMA), driven by gemm_with in
// attention_kernel.h, and the bf16 pair packing it needs. Included by isa_avx512bf16.cpp.
// (Tried for the backward's S = Q·Kᵀ and dP = dO·Vᵀ too: no measurable gain over the fp32
// GEMMs once the extra packing is paid, so the backward stays fp32.)
//
// Layouts: a dot-product operand pairs two consecutive reduction indices in one 32-bit lane.
// A rows (Q rows, P rows) already have their reduction index contiguous, so a 32-bit broadcast
// of A[r][2k..2k+1] is the A operand; B is packed as pairs: B2[k/2][j][k%2], i.e. Kᵀ pairs two
// feature indices per key, V pairs two keys per value column. Scores, softmax and the output
// accumulator stay fp32; the forward rounds P to bf16 before P·V (as GPU FlashAttention does).
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

// Kᵀ-style pair packing of one (b, h): dst[(d / 2) * 2 ld + 2 n + d % 2] = t[b, n, h, d], n < cnt,
// d < D (dst zeroed by the caller, so an odd D pairs its last feature with 0).
inline void pack_pairs_t(const Strided4& t, int64_t b, int64_t h, int64_t cnt, int64_t D, uint16_t* dst, int64_t ld) {
  for (int64_t n = 0; n < cnt; ++n)
    for (int64_t d = 0; d < D; ++d) dst[(d >> 1) * 2 * ld + 2 * n + (d & 1)] = bf16_bits(t, b, n, h, d);
}

// Row packing with an even row length ld (zero pad): dst[n * ld + d] = t[b, n0 + n, h, d].
inline void pack_bf16_rows(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t cnt, int64_t D, uint16_t* dst,
                           int64_t ld) {
  for (int64_t n = 0; n < cnt; ++n) {
    dst[n * ld + ld - 1] = 0;
    for (int64_t d = 0; d < D; ++d) dst[n * ld + d] = bf16_bits(t, b, n0 + n, h, d);
  }
}
