// The hand-written GEMM micro-kernel of the CPU kernels: C (M×N) (+)= A (M×K) · B (K×N), all
// row-major in the accumulation type, N a multiple of the vector width W (callers zero-pad). The
// register block is MR rows × NV vectors; B's row segment is loaded once per k and reused by MR
// broadcasts of A. gemm_with drives any micro-kernel with this block interface (gemm_bf16dot.h has
// the bf16 dot-product one).
//
// Included inside namespace armour::<isa> by isa_<isa>.cpp after the ISA's vector header (VecF /
// VecD: load, set1, zero, store, fmadd; W, MR, NV).
#pragma once

inline int64_t gemm_min(int64_t a, int64_t b) { return a < b ? a : b; }

// The float micro-kernel: Kern::block<R, NV> computes an R-row × NV-vector block of C.
template <class V>
struct FloatKernel {
  using S = typename V::S;
  using AT = S;  // element types of A and B
  using BT = S;
  static constexpr int W = V::W, MR = V::MR, NV = V::NV;
  static const AT* a_rows(const AT* A, int64_t i, int64_t lda) { return A + i * lda; }
  static const BT* b_cols(const BT* B, int64_t j) { return B + j; }

  template <int R, int NV>
  static inline void block(int64_t K, const AT* A, int64_t lda, const BT* B, int64_t ldb, S* C, int64_t ldc,
                           bool accumulate) {
    V c[R][NV];
    for (int r = 0; r < R; ++r)
      for (int n = 0; n < NV; ++n) c[r][n] = accumulate ? V::load(C + r * ldc + n * W) : V::zero();
    for (int64_t kk = 0; kk < K; ++kk) {
      V b[NV];
      for (int n = 0; n < NV; ++n) b[n] = V::load(B + kk * ldb + n * W);
      for (int r = 0; r < R; ++r) {
        V a = V::set1(A[r * lda + kk]);
        for (int n = 0; n < NV; ++n) c[r][n] = fmadd(a, b[n], c[r][n]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int n = 0; n < NV; ++n) c[r][n].store(C + r * ldc + n * W);
  }
};

template <class Kern, int NV, int R>
inline void gemm_rows(int64_t rows, int64_t K, const typename Kern::AT* A, int64_t lda, const typename Kern::BT* B,
                      int64_t ldb, typename Kern::S* C, int64_t ldc, bool accumulate) {
  if constexpr (R > 0) {
    if (rows == R)
      Kern::template block<R, NV>(K, A, lda, B, ldb, C, ldc, accumulate);
    else
      gemm_rows<Kern, NV, R - 1>(rows, K, A, lda, B, ldb, C, ldc, accumulate);
  }
}

// One column strip of NV vectors: MR-row blocks sweep over the B strip (K × NV·W), which stays in L1.
template <class Kern, int NV>
void gemm_strip(int64_t M, int64_t K, const typename Kern::AT* A, int64_t lda, const typename Kern::BT* B,
                int64_t ldb, typename Kern::S* C, int64_t ldc, bool accumulate) {
  constexpr int MR = Kern::MR;
  for (int64_t i = 0; i < M; i += MR)
    gemm_rows<Kern, NV, MR>(gemm_min(MR, M - i), K, Kern::a_rows(A, i, lda), lda, B, ldb, C + i * ldc, ldc, accumulate);
}

template <class Kern, int NV>
void gemm_tail(int64_t nv, int64_t M, int64_t K, const typename Kern::AT* A, int64_t lda, const typename Kern::BT* B,
               int64_t ldb, typename Kern::S* C, int64_t ldc, bool accumulate) {
  if constexpr (NV > 0) {
    if (nv == NV)
      gemm_strip<Kern, NV>(M, K, A, lda, B, ldb, C, ldc, accumulate);
    else
      gemm_tail<Kern, NV - 1>(nv, M, K, A, lda, B, ldb, C, ldc, accumulate);
  }
}

// C in column strips of Kern::NV vectors, the last strip narrower.
template <class Kern>
void gemm_with(int64_t M, int64_t N, int64_t K, const typename Kern::AT* A, int64_t lda, const typename Kern::BT* B,
               int64_t ldb, typename Kern::S* C, int64_t ldc, bool accumulate) {
  constexpr int W = Kern::W, NV = Kern::NV;
  int64_t j = 0;
  for (; j + NV * W <= N; j += NV * W)
    gemm_strip<Kern, NV>(M, K, A, lda, Kern::b_cols(B, j), ldb, C + j, ldc, accumulate);
  if (j < N) gemm_tail<Kern, NV - 1>((N - j) / W, M, K, A, lda, Kern::b_cols(B, j), ldb, C + j, ldc, accumulate);
}

template <class V>
void gemm(int64_t M, int64_t N, int64_t K, const typename V::S* A, int64_t lda, const typename V::S* B,
          int64_t ldb, typename V::S* C, int64_t ldc, bool accumulate) {
  gemm_with<FloatKernel<V>>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}
