// Small helpers shared by the Nyström and Performer CPU kernels, generic over the ISA's VecF
// (W float lanes). Included inside armour::<ISA> after vec_*.h; everything lives in namespace
// `lin` so nothing collides with the attention kernels' names. Row buffers are zero-padded to
// a multiple of W, so every vector loop runs over whole vectors and the padding adds zeros.
#pragma once

namespace lin {

inline int64_t up(int64_t n, int64_t w) { return (n + w - 1) / w * w; }

// Zeroed, 64-byte aligned float scratch owned by one task (malloc: no std templates in ISA code).
struct Buf {
  float* p;
  explicit Buf(int64_t n) {
    size_t bytes = static_cast<size_t>(up(n < 1 ? 1 : n, 16)) * sizeof(float);
    p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();  // at::parallel_for rethrows it on the calling thread
    std::memset(p, 0, bytes);
  }
  ~Buf() { std::free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

// dst[0, len) = scale · row (b, n, h) of a strided fp32 (B, N, H, D) tensor; dst's tail stays as it was.
inline void load_row(const Strided4& t, int64_t b, int64_t n, int64_t h, int64_t len, float scale, float* dst) {
  const float* src = static_cast<const float*>(t.ptr) + b * t.sb + n * t.sn + h * t.sh;
  if (t.sd == 1) {
    for (int64_t d = 0; d < len; ++d) dst[d] = scale * src[d];
  } else {
    for (int64_t d = 0; d < len; ++d) dst[d] = scale * src[d * t.sd];
  }
}

// y[0, len) += a · x (len a multiple of W)
inline void axpy(float a, const float* x, float* y, int64_t len) {
  const VecF av = VecF::set1(a);
  for (int64_t i = 0; i < len; i += VecF::W) fmadd(av, VecF::load(x + i), VecF::load(y + i)).store(y + i);
}

inline void scale_inplace(float a, float* y, int64_t len) {
  const VecF av = VecF::set1(a);
  for (int64_t i = 0; i < len; i += VecF::W) (av * VecF::load(y + i)).store(y + i);
}

inline float dot(const float* a, const float* b, int64_t len) {
  VecF acc = VecF::zero();
  for (int64_t i = 0; i < len; i += VecF::W) acc = fmadd(VecF::load(a + i), VecF::load(b + i), acc);
  return hsum(acc);
}

// y[j0, j0 + NV·W) (+)= Σ_{k<K} x[k] · B[k, j0 + …]: NV independent accumulators stay in registers.
template <int NV>
inline void row_gemv_block(const float* x, int64_t K, const float* B, int64_t ldb, float* y, bool accumulate) {
  VecF acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = accumulate ? VecF::load(y + v * VecF::W) : VecF::zero();
  for (int64_t k = 0; k < K; ++k) {
    const VecF xk = VecF::set1(x[k]);
    const float* b = B + k * ldb;
    for (int v = 0; v < NV; ++v) acc[v] = fmadd(xk, VecF::load(b + v * VecF::W), acc[v]);
  }
  for (int v = 0; v < NV; ++v) acc[v].store(y + v * VecF::W);
}

// y[0, cols) (+)= x[0, K) · B (K × cols, row stride ldb); cols a multiple of W. The row-times-matrix
// product every sweep is made of (features u = x·Pᵀ, scores q·k̃ᵀ, φ·ctx, p·V, the conv taps).
inline void row_gemv(const float* x, int64_t K, const float* B, int64_t ldb, int64_t cols, float* y,
                     bool accumulate) {
  constexpr int kMaxNV = 8;
  for (int64_t j = 0; j < cols; j += kMaxNV * VecF::W) {
    const int64_t nv = (cols - j) / VecF::W < kMaxNV ? (cols - j) / VecF::W : kMaxNV;
    switch (nv) {
      case 1: row_gemv_block<1>(x, K, B + j, ldb, y + j, accumulate); break;
      case 2: row_gemv_block<2>(x, K, B + j, ldb, y + j, accumulate); break;
      case 3: row_gemv_block<3>(x, K, B + j, ldb, y + j, accumulate); break;
      case 4: row_gemv_block<4>(x, K, B + j, ldb, y + j, accumulate); break;
      case 5: row_gemv_block<5>(x, K, B + j, ldb, y + j, accumulate); break;
      case 6: row_gemv_block<6>(x, K, B + j, ldb, y + j, accumulate); break;
      case 7: row_gemv_block<7>(x, K, B + j, ldb, y + j, accumulate); break;
      default: row_gemv_block<8>(x, K, B + j, ldb, y + j, accumulate); break;
    }
  }
}

// In place softmax of x[0, len) (len ≤ padded, padded a multiple of W; the lanes past len become 0).
// Returns the natural log of the sum of exponentials.
inline float softmax_row(float* x, int64_t len, int64_t padded) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < len; ++j) mx = x[j] > mx ? x[j] : mx;
  for (int64_t j = len; j < padded; ++j) x[j] = -INFINITY;  // vexp(-inf) = 0
  const VecF shift = VecF::set1(mx);
  VecF sum = VecF::zero();
  for (int64_t j = 0; j < padded; j += VecF::W) {
    const VecF e = vexp(VecF::load(x + j) - shift);
    e.store(x + j);
    sum = sum + e;
  }
  const float total = hsum(sum);
  scale_inplace(1.f / total, x, padded);
  return mx + std::log(total);
}

// C (rows × cols) = A (rows × K, row stride lda) · B (K × cols, row stride ldb); cols a multiple of W.
inline void matmul(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t rows,
                   int64_t K, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i) row_gemv(A + i * lda, K, B, ldb, cols, C + i * ldc, false);
}

inline float row_max(const float* u, int64_t len) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < len; ++j) mx = u[j] > mx ? u[j] : mx;
  return mx;
}

}  // namespace lin
