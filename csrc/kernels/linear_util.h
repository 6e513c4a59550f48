// Small helpers shared by the Nyström and Performer CPU kernels, generic over the ISA's VecF
// (W float lanes). Included inside armour::<ISA> after vec_*.h; everything lives in namespace
// `lin` so nothing collides with the attention kernels' names.
//
// Buffers are row-major with rows padded to a multiple of W (`up`), so vector loops run over
// whole vectors; the padding lanes are kept at values that add nothing (zeros, or −inf before
// an exp). The GEMMs (a.p.gemm) only ever read and write the unpadded columns.
#pragma once

namespace lin {

inline int64_t up(int64_t n, int64_t w) { return (n + w - 1) / w * w; }
inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

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

// One task of a pass: (b, h) and its token range [begin, end), a whole number of `block`-token
// blocks (the last one may be short). Splits of one (b, h) are contiguous task indices.
struct Task {
  int64_t bh, b, h, split, begin, end;
};

inline Task task_of(const LinearPlan& p, int64_t task, int64_t n, int64_t block) {
  const int64_t bh = task / p.splits, split = task % p.splits;
  const int64_t blocks = (n + block - 1) / block;
  const int64_t first = blocks * split / p.splits, last = blocks * (split + 1) / p.splits;
  return {bh, bh / p.H, bh % p.H, split, imin(n, first * block), imin(n, last * block)};
}

// Runs body over every task (b, h, split) of a pass.
template <class Args>
inline void run_tasks(const Args& a, ParallelBody body) {
  a.p.parallel_for(a.p.B * a.p.H * a.p.splits, const_cast<Args*>(&a), body);
}

inline const float* row_ptr(const Strided4& t, int64_t b, int64_t n, int64_t h) {
  return static_cast<const float*>(t.ptr) + b * t.sb + n * t.sn + h * t.sh;
}

// Rows [n0, n0 + rows) of head h of a (B, N, H, D) tensor as a row-major (rows × cols) matrix:
// the tensor's own memory when its rows are unit-stride (the GEMM reads it in place), else a
// copy in `scratch` (rows × cols floats).
struct Rows {
  const float* p;
  int64_t ld;
};

inline Rows rows_of(const Strided4& t, int64_t b, int64_t n0, int64_t h, int64_t rows, int64_t cols, float* scratch) {
  const float* src = row_ptr(t, b, n0, h);
  if (t.sd == 1 && (t.sn >= cols || rows == 1)) return {src, rows == 1 ? cols : t.sn};
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) scratch[r * cols + c] = src[r * t.sn + c * t.sd];
  return {scratch, cols};
}

// dst[c·ldd + r] = scale · x[n0 + r][c]: the block transposed (cols × rows, row stride ldd).
// Tiles of 8 rows keep the reads of one tile within a few cache lines.
inline void load_transposed(const Strided4& t, int64_t b, int64_t n0, int64_t h, int64_t rows, int64_t cols,
                            float scale, float* dst, int64_t ldd) {
  const float* src = row_ptr(t, b, n0, h);
  constexpr int64_t T = 8;
  for (int64_t r0 = 0; r0 < rows; r0 += T) {
    const int64_t r1 = imin(rows, r0 + T);
    for (int64_t c = 0; c < cols; ++c) {
      float* d = dst + c * ldd;
      for (int64_t r = r0; r < r1; ++r) d[r] = scale * src[r * t.sn + c * t.sd];
    }
  }
}

// dst[0, len) = scale · row (b, n, h) of a strided (B, N, H, D) tensor; dst's tail stays as it was.
inline void load_row(const Strided4& t, int64_t b, int64_t n, int64_t h, int64_t len, float scale, float* dst) {
  const float* src = row_ptr(t, b, n, h);
  if (t.sd == 1) {
    for (int64_t d = 0; d < len; ++d) dst[d] = scale * src[d];
  } else {
    for (int64_t d = 0; d < len; ++d) dst[d] = scale * src[d * t.sd];
  }
}

// y[0, n) += a · x[0, n), any n (vector body, scalar tail).
inline void axpy_n(float a, const float* x, float* y, int64_t n) {
  const VecF av = VecF::set1(a);
  int64_t i = 0;
  for (; i + VecF::W <= n; i += VecF::W) fmadd(av, VecF::load(x + i), VecF::load(y + i)).store(y + i);
  for (; i < n; ++i) y[i] += a * x[i];
}

inline float dot_n(const float* a, const float* b, int64_t n) {
  VecF acc = VecF::zero();
  int64_t i = 0;
  for (; i + VecF::W <= n; i += VecF::W) acc = fmadd(VecF::load(a + i), VecF::load(b + i), acc);
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y[0, len) (len a multiple of W) scaled in place.
inline void scale_inplace(float a, float* y, int64_t len) {
  const VecF av = VecF::set1(a);
  for (int64_t i = 0; i < len; i += VecF::W) (av * VecF::load(y + i)).store(y + i);
}

// max(a, b), NaN when either is NaN. The max instructions (and std::max, a > b ? a : b) return one
// operand when the other is NaN, so a reduction built on them alone can drop a NaN: where one
// maximum is shared beyond its own row (Performer's key stabiliser, batch-wide in seed mode), a
// NaN input must reach it, as in PyTorch's max.
inline float nan_max(float a, float b) { return a != a || b != b ? a + b : (a > b ? a : b); }

// Max of x[0, len) (vector body, scalar tail); NaN if any element is NaN.
inline float max_n(const float* x, int64_t len) {
  VecF m = VecF::set1(-INFINITY);
  int64_t i = 0;
  for (; i + VecF::W <= len; i += VecF::W) m = vmax_nan(m, VecF::load(x + i));
  float lanes[VecF::W];
  m.store(lanes);
  float r = -INFINITY;
  for (int k = 0; k < VecF::W; ++k) r = nan_max(r, lanes[k]);
  for (; i < len; ++i) r = nan_max(r, x[i]);
  return r;
}

// Max of x[0, len) with x[len, padded) set to −inf first (padded a multiple of W): whole vectors
// only, no scalar tail (a dependent chain of scalar max ops costs as much as the vector part). A
// NaN among x[0, len) need not survive: every caller exponentiates the row against it, which
// makes the row NaN anyway.
inline float max_padded(float* x, int64_t len, int64_t padded) {
  for (int64_t j = len; j < padded; ++j) x[j] = -INFINITY;
  VecF m = VecF::load(x);
  for (int64_t j = VecF::W; j < padded; j += VecF::W) m = vmax(m, VecF::load(x + j));
  return hmax(m);
}

// dst (rows × cols, row stride ldd) = srcᵀ where src is (cols × rows, row stride lds); small
// per-(b, h) operands only.
inline void transpose_into(const float* src, int64_t lds, int64_t cols, int64_t rows, float scale, float* dst,
                           int64_t ldd) {
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = 0; r < rows; ++r) dst[r * ldd + c] = scale * src[c * lds + r];
}

// x ← exp(x − shift) over [0, padded) (a multiple of W); returns the sum.
inline float exp_shifted(float* x, float shift, int64_t padded) {
  const VecF sv = VecF::set1(shift);
  VecF sum = VecF::zero();
  for (int64_t j = 0; j < padded; j += VecF::W) {
    const VecF e = vexp(VecF::load(x + j) - sv);
    e.store(x + j);
    sum = sum + e;
  }
  return hsum(sum);
}

// In place softmax of x[0, len) (padded a multiple of W, ≥ len; the lanes past len become 0, also
// in a NaN row, where 0 · (1 / NaN) would leave NaN there). Returns the natural log of the sum of
// exponentials.
inline float softmax_row(float* x, int64_t len, int64_t padded) {
  const float mx = max_padded(x, len, padded);  // the padding lanes −inf: vexp gives 0 there
  const float total = exp_shifted(x, mx, padded);
  scale_inplace(1.f / total, x, padded);
  for (int64_t j = len; j < padded; ++j) x[j] = 0.f;
  return mx + std::log(total);
}

// The softmax backward of one row in place: da ← a ∘ (da − Σ a∘da) over [0, padded) (a's
// padding lanes are 0, so they give 0). The padding lanes of da are left 0: the GEMMs never write
// them, so a NaN left there by a NaN row (0 · NaN) would reach the next (b, h) through its sum.
inline void softmax_grad_row(const float* a, float* da, int64_t len, int64_t padded) {
  VecF acc = VecF::zero();
  for (int64_t j = 0; j < padded; j += VecF::W) acc = fmadd(VecF::load(a + j), VecF::load(da + j), acc);
  const VecF s = VecF::set1(hsum(acc));
  for (int64_t j = 0; j < padded; j += VecF::W)
    (VecF::load(a + j) * (VecF::load(da + j) - s)).store(da + j);
  for (int64_t j = len; j < padded; ++j) da[j] = 0.f;
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

// y[0, cols) (+)= x[0, K) · B (K × cols, row stride ldb); cols a multiple of W. The residual
// conv's taps (a K-tap window times its value rows), too narrow for a GEMM call.
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

// Rows [n0 − half, n1 + half) of head h, zero outside [0, N), into win (row stride ldw): what
// a (2·half + 1)-tap conv along the sequence reads for the outputs [n0, n1).
inline void load_window(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t n1, int64_t half, int64_t N,
                        int64_t cols, float* win, int64_t ldw) {
  for (int64_t src = n0 - half; src < n1 + half; ++src) {
    float* dst = win + (src - n0 + half) * ldw;
    if (src < 0 || src >= N) {
      std::memset(dst, 0, sizeof(float) * cols);
    } else {
      load_row(t, b, src, h, cols, 1.f, dst);
    }
  }
}

// Whether rows of t can be read in place as whole vectors: unit feature stride and `cols` a
// multiple of W (then the residual conv reads its taps' rows without copying them).
inline bool rows_in_place(const Strided4& t, int64_t cols) { return t.sd == 1 && cols % VecF::W == 0; }

// out[0, cols) (+)= Σ_t taps[t] · x[n + t − half] over the taps whose row lies in [0, N): the
// depthwise conv along the sequence at output row n, reading the rows of head h in place
// (rows_in_place(x, cols)).
inline void conv_row_in_place(const float* taps, int64_t K, const Strided4& x, int64_t b, int64_t h, int64_t n,
                              int64_t N, int64_t cols, float* out, bool add) {
  const int64_t half = K / 2, t0 = imax(0, half - n), t1 = imin(K, N - n + half);
  if (t1 <= t0) {
    if (!add) std::memset(out, 0, sizeof(float) * cols);
    return;
  }
  row_gemv(taps + t0, t1 - t0, row_ptr(x, b, n + t0 - half, h), x.sn, cols, out, add);
}

// out[r] (+)= Σ_t taps[t] · win[r + t] for r < rows: the depthwise conv of a loaded window;
// out rows have row stride ldo and `cols` valid columns (acc: colsp floats of scratch).
inline void conv_rows(const float* taps, int64_t K, const float* win, int64_t ldw, int64_t rows, int64_t cols,
                      float* out, int64_t ldo, bool add, float* acc) {
  for (int64_t r = 0; r < rows; ++r) {
    row_gemv(taps, K, win + r * ldw, ldw, ldw, acc, false);
    float* o = out + r * ldo;
    if (add) {
      for (int64_t c = 0; c < cols; ++c) o[c] += acc[c];
    } else {
      std::memcpy(o, acc, sizeof(float) * cols);
    }
  }
}

}  // namespace lin
