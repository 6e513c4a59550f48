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

inline const uint16_t* bf16_row(const Strided4& t, int64_t b, int64_t n, int64_t h) {
  return &(static_cast<const bf16_t*>(t.ptr) + b * t.sb + n * t.sn + h * t.sh)->bits;
}

// Kᵀ-style pair packing of one (b, h): dst[(d / 2) * 2 ld + 2 n + d % 2] = t[b, n, h, d], n < cnt,
// d < D (dst zeroed by the caller, so an odd D pairs its last feature with 0). With unit feature
// stride a pair is one aligned 32-bit word of the row: a 32-bit transpose, one move per pair.
inline void pack_pairs_t(const Strided4& t, int64_t b, int64_t h, int64_t cnt, int64_t D, uint16_t* dst, int64_t ld) {
  if (t.sd == 1 && t.sn % 2 == 0 && 16 * t.sn < (int64_t{1} << 31)) {
    // 16 keys at a time: a 32-bit gather per pair index (word e of 16 rows) and one contiguous store,
    // instead of 16 scattered 32-bit stores (measured as the hot loop of the bf16 forward's packing).
    const int32_t step = static_cast<int32_t>(t.sn / 2);  // row stride in 32-bit words
    const __m512i lanes = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             _mm512_set1_epi32(step));
    const int64_t pairs = D / 2;
    for (int64_t n0 = 0; n0 < cnt; n0 += 16) {
      const __mmask16 m = n0 + 16 <= cnt ? static_cast<__mmask16>(0xffff)
                                         : static_cast<__mmask16>((1u << (cnt - n0)) - 1u);
      const uint16_t* row0 = bf16_row(t, b, n0, h);
      for (int64_t e = 0; e < pairs; ++e) {
        const __m512i w = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, lanes, row0 + 2 * e, 4);
        _mm512_mask_storeu_epi32(dst + e * 2 * ld + 2 * n0, m, w);
      }
      if (D & 1)
        for (int64_t n = n0; n < n0 + 16 && n < cnt; ++n) dst[pairs * 2 * ld + 2 * n] = bf16_row(t, b, n, h)[D - 1];
    }
    return;
  }
  if (t.sd == 1) {
    const int64_t pairs = D / 2;
    for (int64_t n = 0; n < cnt; ++n) {
      const uint16_t* row = bf16_row(t, b, n, h);
      for (int64_t e = 0; e < pairs; ++e) std::memcpy(dst + e * 2 * ld + 2 * n, row + 2 * e, 4);
      if (D & 1) dst[pairs * 2 * ld + 2 * n] = row[D - 1];
    }
    return;
  }
  for (int64_t n = 0; n < cnt; ++n)
    for (int64_t d = 0; d < D; ++d) dst[(d >> 1) * 2 * ld + 2 * n + (d & 1)] = bf16_bits(t, b, n, h, d);
}

// Value pair packing of columns [col, col + width) of one (b, h): dst[(j / 2) * 2 ld + 2 (col + c) + j % 2]
// = t[b, j, h, c], j < cnt (dst zeroed by the caller: an odd cnt pairs its last key with 0). With unit
// feature stride, 16 columns of two keys interleave in one vector: lo | hi << 16 per 32-bit lane.
inline void pack_value_pairs(const Strided4& t, int64_t b, int64_t h, int64_t cnt, int64_t width, uint16_t* dst,
                             int64_t ld, int64_t col) {
  if (t.sd != 1) {
    for (int64_t j = 0; j < cnt; ++j)
      for (int64_t c = 0; c < width; ++c) dst[(j >> 1) * 2 * ld + 2 * (col + c) + (j & 1)] = bf16_bits(t, b, j, h, c);
    return;
  }
  for (int64_t j = 0; j < cnt; j += 2) {
    const uint16_t* r0 = bf16_row(t, b, j, h);
    const uint16_t* r1 = j + 1 < cnt ? bf16_row(t, b, j + 1, h) : nullptr;
    uint16_t* out = dst + (j >> 1) * 2 * ld + 2 * col;
    for (int64_t c = 0; c < width; c += 16) {
      const __mmask16 m = c + 16 <= width ? static_cast<__mmask16>(0xffff)
                                          : static_cast<__mmask16>((1u << (width - c)) - 1u);
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r0 + c));
      const __m512i hi = r1 ? _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r1 + c)), 16)
                            : _mm512_setzero_si512();
      _mm512_mask_storeu_epi32(out + 2 * c, m, _mm512_or_si512(lo, hi));
    }
  }
}

// Row packing with an even row length ld (zero pad): dst[n * ld + d] = t[b, n0 + n, h, d].
inline void pack_bf16_rows(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t cnt, int64_t D, uint16_t* dst,
                           int64_t ld) {
  for (int64_t n = 0; n < cnt; ++n) {
    dst[n * ld + ld - 1] = 0;
    if (t.sd == 1) {
      std::memcpy(dst + n * ld, bf16_row(t, b, n0 + n, h), static_cast<size_t>(D) * 2);
      continue;
    }
    for (int64_t d = 0; d < D; ++d) dst[n * ld + d] = bf16_bits(t, b, n0 + n, h, d);
  }
}
