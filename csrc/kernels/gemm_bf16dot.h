// The AVX512-BF16 dot-product GEMM micro-kernel (vdpbf16ps: two bf16 products summed into each
// fp32 lane per instruction), driven by gemm_with (gemm_float.h). The attention engine that packs
// its operands is in attention_bf16dot.h.
//
// Layouts: a dot-product operand pairs two consecutive reduction indices in one 32-bit lane.
// A rows already have their reduction index contiguous, so a 32-bit broadcast of A[r][2k..2k+1]
// is the A operand; B is packed in VNNI pairs B2[k/2][j][k%2] (the layout oneDNN's brgemm takes).
//
// Included inside namespace armour::avx512bf16 (the only ISA with the instruction).
#pragma once

#include "kernels/gemm_float.h"

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
