// The plain GEMM engine of the attention kernels: operands in the accumulation type (fp32, or
// fp64 for double inputs), row-major, B's reduction index along its rows. bf16 inputs are widened
// to fp32 while packing. The products run on the brgemm callback when the torch side lends one
// (fp32: oneDNN's AVX-512 / AVX2 micro-kernel, kernel_api.h), else on the hand-written micro-kernel
// (gemm_float.h). The other engine, bf16 operands in VNNI pairs, is in attention_bf16dot.h; the
// forward and backward (attention_forward.h, attention_backward.h) are written against both.
//
// Included inside namespace armour::<isa> by isa_<isa>.cpp after the ISA's vector headers.
#pragma once

#include "kernels/attention_common.h"
#include "kernels/gemm_float.h"

template <class V>
struct PlainGemm {
  using S = typename V::S;
  using Op = S;                        // operand element type
  static constexpr int64_t kPair = 1;  // the reduction dimension needs no padding
  GemmF32 brgemm = nullptr;

  // C (M×N, ldc) = or += A (M×K, lda) · B (K×N, ldb); N a multiple of W unless brgemm runs it.
  void operator()(int64_t M, int64_t N, int64_t K, const Op* A, int64_t lda, const Op* B, int64_t ldb, S* C,
                  int64_t ldc, bool add) const {
    if (M == 0 || N == 0) return;
    if constexpr (sizeof(S) == sizeof(float)) {
      if (brgemm && K > 0) return brgemm(M, N, K, lda, ldb, ldc, add, A, B, C);
    }
    gemm<V>(M, N, K, A, lda, B, ldb, C, ldc, add);  // K = 0: C = 0, or unchanged with add
  }

  // Column j of a B whose reduction index runs along its rows.
  static const Op* b_col(const Op* B, int64_t j) { return B + j; }

  // The multiple the N of a product is rounded up to: the hand-written micro-kernel works on whole
  // vectors (its B and C are padded), brgemm on any N (no padding column computed or written).
  int64_t n_align() const {
    if constexpr (sizeof(S) == sizeof(float)) return brgemm ? 1 : V::W;
    return V::W;
  }

  // Whether an input can be the A operand in place: rows of Op with unit feature stride.
  template <class T>
  static bool a_in_place(const Strided4& t, int64_t) { return sizeof(T) == sizeof(Op) && t.sd == 1; }
  // ... or a B with the reduction over its rows (V, K), D columns: also whole vectors for the
  // hand-written micro-kernel, which reads B in full vectors.
  template <class T>
  bool b_rows_in_place(const Strided4& t, int64_t D) const {
    return sizeof(T) == sizeof(Op) && t.sd == 1 && (n_align() == 1 || D % V::W == 0);
  }

  // B with the reduction over features (Kᵀ, Vᵀ): dst[(row0 + d) * ld + n] = t[b, n0 + n, h, d];
  // columns [cnt, round_up(cnt, W)) are zeroed (ld must leave room for them).
  template <class T>
  static void pack_b_cols(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t cnt, int64_t D, Op* dst,
                          int64_t ld, int64_t row0) {
    pack_cols<V, T>(t, b, h, n0, cnt, D, dst, ld, row0, /*pad_full=*/true);
  }
  // Whether pack_b_cols leaves anything of its rows and padding to clear first: never.
  static bool b_cols_need_zero(const Strided4&, int64_t, int64_t) { return false; }
  // B with the reduction over rows (V, K): dst[n * ld + col0 + d] = t[b, n0 + n, h, d].
  template <class T>
  static void pack_b_rows(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t cnt, int64_t D, Op* dst,
                          int64_t ld, int64_t col0) {
    pack_rows<V, T>(t, b, h, n0, cnt, D, dst, ld, col0);
  }
  // A operands: rows (Q, dO: reduction over features) and transposed (Qᵀ, dOᵀ: over rows).
  template <class T>
  static void pack_a_rows(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t cnt, int64_t D, Op* dst,
                          int64_t ld) {
    pack_rows<V, T>(t, b, h, n0, cnt, D, dst, ld, 0);
  }
  template <class T>
  static void pack_a_cols(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t cnt, int64_t D, Op* dst,
                          int64_t ld, int64_t col) {
    pack_cols<V, T>(t, b, h, n0, cnt, D, dst + col, ld, 0);
  }
};
