// The bf16 GEMM engine of the attention kernels: bf16 operands, B in VNNI pairs B[k / 2][n][k % 2]
// (two consecutive reduction indices in one 32-bit lane), fp32 accumulation. The products run on
// the brgemm callback when the torch side lends one (AMX tiles, kernel_api.h), else on the
// vdpbf16ps micro-kernel (gemm_bf16dot.h). Same interface as PlainGemm (attention_gemm_plain.h),
// plus the writers of P and dS in the backward's operand layouts.
//
// Layouts by role (ld counts pairs for B):
// - B, reduction over features (Kᵀ, Vᵀ): dst[(d / 2) · 2 ld + 2 n + d % 2] = X[n, d];
// - B, reduction over rows (V, K, and P / dS over query rows): dst[(n / 2) · 2 ld + 2 d + n % 2];
// - A: plain bf16 rows, the reduction index contiguous (Q, dO, P, dS rows; Qᵀ and dOᵀ).
// Odd reduction lengths are padded with real zeros (brgemm and vdpbf16ps read whole pairs).
//
// Included inside namespace armour::avx512bf16 by kernels/attention_kernel.h.
#pragma once

#include "kernels/attention_common.h"
#include "kernels/gemm_bf16dot.h"

inline const uint16_t* bf16_row(const Strided4& t, int64_t b, int64_t n, int64_t h) {
  return &row_ptr<bf16_t>(t, b, n, h)->bits;
}

inline __mmask16 lanes_below(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

// 16 32-bit words, lo | hi << 16 per lane, from two rows of 16 bf16 (hi may be all zeros).
inline __m512i interleave_pairs(__m256i lo, __m256i hi) {
  return _mm512_or_si512(_mm512_cvtepu16_epi32(lo), _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
}

struct PairGemm {
  using S = float;
  using Op = uint16_t;
  static constexpr int64_t kPair = 2;
  GemmBf16 brgemm = nullptr;

  // C (M×N, ldc) = or += A (M×K, lda) · B (K×N in pairs, ldb pairs a row); K even, N a multiple of
  // 16 unless brgemm runs it.
  void operator()(int64_t M, int64_t N, int64_t K, const Op* A, int64_t lda, const Op* B, int64_t ldb, S* C,
                  int64_t ldc, bool add) const {
    if (M == 0 || N == 0) return;
    if (K == 0) {
      if (!add)
        for (int64_t r = 0; r < M; ++r) std::memset(C + r * ldc, 0, static_cast<size_t>(N) * sizeof(S));
      return;
    }
    if (brgemm) return brgemm(M, N, K, lda, ldb, ldc, add, A, B, C);
    gemm_with<Bf16DotKernel>(M, N, K / 2, A, lda, B, 2 * ldb, C, ldc, add);
  }

  static const Op* b_col(const Op* B, int64_t j) { return B + 2 * j; }

  // The multiple N is rounded up to (brgemm: any N; vdpbf16ps: whole vectors).
  int64_t n_align() const { return brgemm ? 1 : 16; }

  template <class T>
  static bool a_in_place(const Strided4& t, int64_t D) { return t.sd == 1 && D % 2 == 0; }
  template <class T>
  bool b_rows_in_place(const Strided4&, int64_t) const { return false; }  // always repacked in pairs

  // B with the reduction over features, rows [row0, row0 + D) of the pair layout; the columns
  // [cnt, round_up(cnt, 16)) are zeroed. An odd D (or odd row0) pairs a feature with one of another
  // part or with padding: the caller clears dst first (b_cols_need_zero). With unit feature stride
  // and an even row0 a pair is one 32-bit word of the input row: 16 rows at a time go through 16×16
  // transposes of those words, one contiguous store per pair index.
  template <class T>
  static void pack_b_cols(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t cnt, int64_t D, Op* dst,
                          int64_t ld, int64_t row0) {
    if (t.sd == 1 && row0 % 2 == 0) {
      const int64_t pairs = D / 2;
      Op* base = dst + row0 * ld;
      for (int64_t n = 0; n < cnt; n += 16) {
        const int64_t rows = min64(16, cnt - n);
        const __mmask16 m = 0xffff;  // zero lanes past cnt: the padding columns
        const uint16_t* src = bf16_row(t, b, n0 + n, h);
        for (int64_t e0 = 0; e0 < pairs; e0 += 16) {
          __m512i w[16];
          const int64_t cols = min64(16, pairs - e0);
          transpose16_words(src + 2 * e0, t.sn * 2, rows, cols, w);
          for (int64_t k = 0; k < cols; ++k) _mm512_mask_storeu_epi32(base + (e0 + k) * 2 * ld + 2 * n, m, w[k]);
        }
        if (D & 1)
          for (int64_t k = n; k < n + rows; ++k) base[pairs * 2 * ld + 2 * k] = bf16_row(t, b, n0 + k, h)[D - 1];
      }
      return;
    }
    for (int64_t n = 0; n < cnt; ++n) {
      const uint16_t* src = bf16_row(t, b, n0 + n, h);
      for (int64_t d = 0; d < D; ++d) {
        const int64_t r = row0 + d;
        dst[(r >> 1) * 2 * ld + 2 * n + (r & 1)] = src[d * t.sd];
      }
    }
  }
  static bool b_cols_need_zero(const Strided4& t, int64_t D, int64_t row0) {
    return D % 2 != 0 || row0 % 2 != 0 || t.sd != 1;
  }

  // B with the reduction over rows, columns [col0, col0 + D); n0 even; dst zeroed by the caller (an
  // odd row count pairs its last row with 0). Unit feature stride: 16 columns of two rows interleave
  // in one vector.
  template <class T>
  static void pack_b_rows(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t cnt, int64_t D, Op* dst,
                          int64_t ld, int64_t col0) {
    for (int64_t n = 0; n < cnt; n += 2) {
      const uint16_t* r0 = bf16_row(t, b, n0 + n, h);
      const uint16_t* r1 = n + 1 < cnt ? bf16_row(t, b, n0 + n + 1, h) : nullptr;
      Op* out = dst + (n >> 1) * 2 * ld + 2 * col0;
      if (t.sd != 1) {
        for (int64_t d = 0; d < D; ++d) {
          out[2 * d] = r0[d * t.sd];
          out[2 * d + 1] = r1 ? r1[d * t.sd] : Op(0);
        }
        continue;
      }
      for (int64_t d = 0; d < D; d += 16) {
        const __mmask16 m = lanes_below(D - d);
        const __m256i lo = _mm256_maskz_loadu_epi16(m, r0 + d);
        const __m256i hi = r1 ? _mm256_maskz_loadu_epi16(m, r1 + d) : _mm256_setzero_si256();
        _mm512_mask_storeu_epi32(out + 2 * d, m, interleave_pairs(lo, hi));
      }
    }
  }

  // A rows: dst[n * ld + d] = t[b, n0 + n, h, d] (ld even; the pad column is the caller's zero).
  template <class T>
  static void pack_a_rows(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t cnt, int64_t D, Op* dst,
                          int64_t ld) {
    for (int64_t n = 0; n < cnt; ++n) {
      const uint16_t* src = bf16_row(t, b, n0 + n, h);
      if (t.sd == 1) {
        std::memcpy(dst + n * ld, src, static_cast<size_t>(D) * sizeof(Op));
        continue;
      }
      for (int64_t d = 0; d < D; ++d) dst[n * ld + d] = src[d * t.sd];
    }
  }

  // A transposed (Qᵀ, dOᵀ): dst[d * ld + col + n] = t[b, n0 + n, h, d].
  template <class T>
  static void pack_a_cols(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t cnt, int64_t D, Op* dst,
                          int64_t ld, int64_t col) {
    pack_cols<VecF, T>(t, b, h, n0, cnt, D, dst + col, ld, 0);  // bf16 → float → bf16 is exact
  }

  // Two fp32 rows (r1 null: zeros) → one pair row of a B with the reduction over rows: dst[2c + k] =
  // bf16(r_k[c]), c < n (n a multiple of 16).
  static void store_b_pair_rows(const float* r0, const float* r1, int64_t n, Op* dst) {
    for (int64_t c = 0; c < n; c += 16) {
      const __m256i lo = bf16_bits(VecF::load(r0 + c));
      const __m256i hi = r1 ? bf16_bits(VecF::load(r1 + c)) : _mm256_setzero_si256();
      _mm512_storeu_si512(dst + 2 * c, interleave_pairs(lo, hi));
    }
  }
  // An fp32 row → a bf16 A row (n a multiple of 16).
  static void store_a_row(const float* r, int64_t n, Op* dst) {
    for (int64_t c = 0; c < n; c += 16) store_bf16(dst + c, VecF::load(r + c));
  }
};
