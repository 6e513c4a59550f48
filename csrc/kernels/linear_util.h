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
  for (int64_t d = 0; d < len; ++d) dst[d] = scale * src[d * t.sd];
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

// C (rows × cols) = A (rows × K, row stride lda) · B (K × cols, row stride ldb); cols a multiple of W.
inline void matmul(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t rows,
                   int64_t K, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i) {
    float* c = C + i * ldc;
    for (int64_t j = 0; j < cols; j += VecF::W) VecF::zero().store(c + j);
    for (int64_t k = 0; k < K; ++k) axpy(A[i * lda + k], B + k * ldb, c, cols);
  }
}

// u[0, Mp) = x[0, D) · Pt (D × Mp, zero-padded columns): the random-feature projection of one row.
inline void project(const float* x, const float* pt, int64_t D, int64_t Mp, float* u) {
  for (int64_t j = 0; j < Mp; j += VecF::W) {
    VecF acc = VecF::zero();
    for (int64_t d = 0; d < D; ++d) acc = fmadd(VecF::set1(x[d]), VecF::load(pt + d * Mp + j), acc);
    acc.store(u + j);
  }
}

inline float row_max(const float* u, int64_t len) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < len; ++j) mx = u[j] > mx ? u[j] : mx;
  return mx;
}

}  // namespace lin
