// Attention forward / backward and the bias+Hardswish epilogue, written once against a vector
// type V (VecF: AVX-512 / AVX2 / scalar floats; VecD: scalar doubles) and a storage type T
// (float, bf16_t, double). Included inside namespace armour::<isa> by isa_<isa>.cpp, which
// sets the target ISA; needs <cmath>, <cstdint>, <cstdlib>, <cstring>, <new> and kernel_api.h first.
//
// Layout of the work (see docs/layouts.md for the launcher contract):
// - forward: one task per (batch, head, block of kBlockQ queries). The task packs its (b, h)'s
//   Kᵀ (Dk × Nk) and value rows (Nk × Dv, concat of q/k/v parts read in place) once into fp32
//   scratch (bf16 → fp32 here), its query block into rows, then runs an online softmax over key
//   blocks of kBlockK: S = Q·Kᵀ (register-blocked GEMM), scale + bias + masks, running max and
//   sum, O = O·α + P·V. All accumulation in the accumulation type (fp32; fp64 for double).
// - backward (FlashAttention-2 style): one task per (b, h), so dK / dV / dtable rows are
//   accumulated by one thread only (no races, deterministic). P is recomputed from the saved
//   LSE; dS = P∘(dP − δ), δ = rowsum(dO∘O); dQ += s·dS·K, dK += s·dSᵀ·Q, dValue += Pᵀ·dO; the
//   value gradient is then routed to dq ("q" part: Armour), dk ("k" part) or dv.
#pragma once

constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 256;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

template <class S>
inline S neg_inf() { return -static_cast<S>(__builtin_inf()); }

// ------------------------------------------------------------------ element conversions

template <class S> inline S load_as(const float* p) { return static_cast<S>(*p); }
template <class S> inline S load_as(const double* p) { return static_cast<S>(*p); }
template <class S> inline S load_as(const bf16_t* p) {
  uint32_t u = static_cast<uint32_t>(p->bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return static_cast<S>(f);
}

inline void store_as(float* p, float x) { *p = x; }
inline void store_as(double* p, double x) { *p = x; }
inline void store_as(bf16_t* p, float x) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    p->bits = static_cast<uint16_t>((u >> 16) | 0x40u);
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  p->bits = static_cast<uint16_t>(u >> 16);
}

// Bias / table elements: their dtype is chosen at run time (fp32 tables with bf16 activations).
template <class S>
inline S load_dyn(const void* base, int64_t off, DType dt) {
  switch (dt) {
    case DType::bf16: return load_as<S>(static_cast<const bf16_t*>(base) + off);
    case DType::f64: return load_as<S>(static_cast<const double*>(base) + off);
    default: return load_as<S>(static_cast<const float*>(base) + off);
  }
}

// Aligned scratch owned by one task (plain malloc: no std templates in ISA code).
template <class S>
struct Scratch {
  S* p;
  explicit Scratch(int64_t n) {
    size_t bytes = static_cast<size_t>(round_up(n < 1 ? 1 : n, 16)) * sizeof(S);
    p = static_cast<S*>(std::aligned_alloc(64, round_up(static_cast<int64_t>(bytes), 64)));
    if (!p) throw std::bad_alloc();  // at::parallel_for rethrows it on the calling thread
  }
  ~Scratch() { std::free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void zero(int64_t n) { std::memset(p, 0, static_cast<size_t>(n) * sizeof(S)); }
};

// ------------------------------------------------------------------ GEMM micro-kernel
// C (M×N) (+)= A (M×K) · B (K×N), all row-major in the accumulation type; N a multiple of W
// (callers zero-pad). The register block is MR rows × NV vectors; B's row segment is loaded
// once per k and reused by MR broadcasts of A. TA: A is stored transposed (element (r, k) at
// A[k * lda + r]), so dSᵀ·Q and Pᵀ·dO read the score tiles without a transpose copy.

// The float micro-kernel: Kern::block<R, NV> computes an R-row × NV-vector block of C.
template <class V, bool TA>
struct FloatKernel {
  using S = typename V::S;
  using AT = S;  // element types of A and B
  using BT = S;
  static constexpr int W = V::W, MR = V::MR, NV = V::NV;
  static const AT* a_rows(const AT* A, int64_t i, int64_t lda) { return TA ? A + i : A + i * lda; }
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
        V a = V::set1(TA ? A[kk * lda + r] : A[r * lda + kk]);
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
    gemm_rows<Kern, NV, MR>(min64(MR, M - i), K, Kern::a_rows(A, i, lda), lda, B, ldb, C + i * ldc, ldc, accumulate);
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

template <class V, bool TA = false>
void gemm(int64_t M, int64_t N, int64_t K, const typename V::S* A, int64_t lda, const typename V::S* B,
          int64_t ldb, typename V::S* C, int64_t ldc, bool accumulate) {
  gemm_with<FloatKernel<V, TA>>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

// ------------------------------------------------------------------ packing (strided → scratch)

// dst[(n - n0) * ld + col0 + d] = t[b, n, h, d] for n in [n0, n0 + cnt), d < D.
template <class T, class S>
void pack_rows(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t cnt, int64_t D, S* dst, int64_t ld,
               int64_t col0) {
  const T* base = static_cast<const T*>(t.ptr) + b * t.sb + h * t.sh;
  for (int64_t n = 0; n < cnt; ++n) {
    const T* src = base + (n0 + n) * t.sn;
    S* out = dst + n * ld + col0;
    if (t.sd == 1) {  // unit stride (the usual packed projection): a loop the compiler vectorises
      for (int64_t d = 0; d < D; ++d) out[d] = load_as<S>(src + d);
      continue;
    }
    for (int64_t d = 0; d < D; ++d) out[d] = load_as<S>(src + d * t.sd);
  }
}

// dst[(row0 + d) * ld + n] = t[b, n, h, d] for n < cnt, d < D (transposed: keys along a row).
template <class T, class S>
void pack_cols(const Strided4& t, int64_t b, int64_t h, int64_t cnt, int64_t D, S* dst, int64_t ld, int64_t row0) {
  const T* base = static_cast<const T*>(t.ptr) + b * t.sb + h * t.sh;
  if (t.sd == 1) {  // unit stride: each key row is one contiguous read (its writes stay in L1 scratch)
    for (int64_t n = 0; n < cnt; ++n) {
      const T* src = base + n * t.sn;
      for (int64_t d = 0; d < D; ++d) dst[(row0 + d) * ld + n] = load_as<S>(src + d);
    }
    return;
  }
  for (int64_t n = 0; n < cnt; ++n) {
    const T* src = base + n * t.sn;
    for (int64_t d = 0; d < D; ++d) dst[(row0 + d) * ld + n] = load_as<S>(src + d * t.sd);
  }
}

// ------------------------------------------------------------------ scores of one tile

// s[r, c] = scale · s[r, c] + bias[b, h, i0 + r, j0 + c]; columns [bk, bkp) (padding) → -inf;
// with mask_diagonal the diagonal → -inf, its score saved in diag[r] when diag is given.
template <class V>
void finish_scores(const AttentionArgs& a, int64_t b, int64_t h, int64_t i0, int64_t nr, int64_t j0, int64_t bk,
                   int64_t bkp, typename V::S* s, int64_t lds, typename V::S* diag) {
  using S = typename V::S;
  constexpr int W = V::W;
  const V vscale = V::set1(static_cast<S>(a.scale));
  for (int64_t r = 0; r < nr; ++r) {
    S* row = s + r * lds;
    const int64_t i = i0 + r;
    for (int64_t c = 0; c < bkp; c += W) (V::load(row + c) * vscale).store(row + c);
    if (a.bias_kind == BiasKind::dense) {
      const int64_t off = b * a.bias_sb + h * a.bias_sh + i * a.bias_si + j0 * a.bias_sj;
      int64_t c = 0;
      if constexpr (sizeof(S) == sizeof(float)) {  // contiguous fp32 bias rows: vector adds
        if (a.bias_dtype == DType::f32 && a.bias_sj == 1) {
          const S* bp = static_cast<const S*>(a.bias) + off;
          for (; c + W <= bk; c += W) (V::load(row + c) + V::load(bp + c)).store(row + c);
        }
      }
      for (; c < bk; ++c) row[c] += load_dyn<S>(a.bias, off + c * a.bias_sj, a.bias_dtype);
    } else if (a.bias_kind == BiasKind::table) {
      const int64_t* idx = a.index + i * a.index_si + j0 * a.index_sj;
      const int64_t off = h * a.bias_sh;
      for (int64_t c = 0; c < bk; ++c) row[c] += load_dyn<S>(a.bias, off + idx[c * a.index_sj] * a.bias_sj, a.bias_dtype);
    }
    for (int64_t c = bk; c < bkp; ++c) row[c] = neg_inf<S>();
    if (a.mask_diagonal && i >= j0 && i < j0 + bk) {
      if (diag) diag[r] = row[i - j0];
      row[i - j0] = neg_inf<S>();
    }
  }
}

// ------------------------------------------------------------------ forward

// One row's online-softmax step once the row max `blk` of this key block is known: the row becomes
// exp(row - m_new) in place, the running max m and sum l are updated and the output row o is rescaled
// by exp(m_old - m_new).
template <class V>
inline void softmax_row_update(typename V::S* row, int64_t bkp, typename V::S blk, typename V::S& m,
                               typename V::S& l, typename V::S* orow, int64_t ldo) {
  using S = typename V::S;
  constexpr int W = V::W;
  const S m_old = m;
  const S m_new = blk > m_old ? blk : m_old;
  const S m_use = m_new == neg_inf<S>() ? S(0) : m_new;  // all -inf so far: avoid inf - inf
  const V vm = V::set1(m_use);
  V sum = V::zero();
  for (int64_t c = 0; c < bkp; c += W) {
    V pexp = vexp(V::load(row + c) - vm);
    pexp.store(row + c);
    sum = sum + pexp;
  }
  const S alpha = std::exp(m_old - m_use);
  l = l * alpha + hsum(sum);
  m = m_new;
  if (alpha != S(1)) {
    const V va = V::set1(alpha);
    for (int64_t c = 0; c < ldo; c += W) (V::load(orow + c) * va).store(orow + c);
  }
}

// Online softmax over one key block of finished scores (finish_scores): a max pass, then the update.
template <class V>
void online_softmax_update(int64_t nr, int64_t bkp, typename V::S* s, int64_t lds, typename V::S* m,
                           typename V::S* l, typename V::S* o, int64_t ldo) {
  using S = typename V::S;
  constexpr int W = V::W;
  for (int64_t r = 0; r < nr; ++r) {
    S* row = s + r * lds;
    V mx = V::set1(neg_inf<S>());
    for (int64_t c = 0; c < bkp; c += W) mx = vmax(mx, V::load(row + c));
    softmax_row_update<V>(row, bkp, hmax(mx), m[r], l[r], o + r * ldo, ldo);
  }
}

// The common forward case — no diagonal mask, float scores, no bias or a dense fp32 bias with unit key
// stride (LeViT's table arrives here gathered into that form, see ops.cpp) — takes one fused pass for
// scale + bias + key padding + row max instead of finish_scores' passes and the separate max pass.
template <class V>
bool fused_scores_apply(const AttentionArgs& a) {
  if (a.mask_diagonal || sizeof(typename V::S) != sizeof(float)) return false;
  return a.bias_kind == BiasKind::none ||
         (a.bias_kind == BiasKind::dense && a.bias_dtype == DType::f32 && a.bias_sj == 1);
}

// Raw scores s (nr × bkp, bk real keys from j0) → scaled + biased, padding -inf, then the online
// softmax update; the same arithmetic as finish_scores + online_softmax_update.
template <class V>
void fused_scores_softmax_update(const AttentionArgs& a, int64_t b, int64_t h, int64_t i0, int64_t nr, int64_t j0,
                                 int64_t bk, int64_t bkp, typename V::S* s, int64_t lds, typename V::S* m,
                                 typename V::S* l, typename V::S* o, int64_t ldo) {
  using S = typename V::S;
  constexpr int W = V::W;
  const S scale = static_cast<S>(a.scale);
  const V vscale = V::set1(scale);
  const int64_t full = bk / W * W;
  for (int64_t r = 0; r < nr; ++r) {
    S* row = s + r * lds;
    const S* bp = a.bias_kind == BiasKind::dense
                      ? static_cast<const S*>(a.bias) + b * a.bias_sb + h * a.bias_sh + (i0 + r) * a.bias_si + j0
                      : nullptr;
    V mx = V::set1(neg_inf<S>());
    for (int64_t c = 0; c < full; c += W) {
      V x = V::load(row + c) * vscale;
      if (bp) x = x + V::load(bp + c);
      x.store(row + c);
      mx = vmax(mx, x);
    }
    for (int64_t c = full; c < bk; ++c) row[c] = row[c] * scale + (bp ? bp[c] : S(0));
    for (int64_t c = bk; c < bkp; ++c) row[c] = neg_inf<S>();
    if (full < bkp) mx = vmax(mx, V::load(row + full));
    softmax_row_update<V>(row, bkp, hmax(mx), m[r], l[r], o + r * ldo, ldo);
  }
}

// Element c of value row j of (b, h), read from its part in place.
template <class T, class S>
S value_at(const AttentionArgs& a, int64_t b, int64_t h, int64_t j, int64_t c) {
  int p = 0;
  for (; p + 1 < a.n_parts && c >= a.part_width[p]; ++p) c -= a.part_width[p];
  const Strided4& t = a.part[p];
  return load_as<S>(static_cast<const T*>(t.ptr) + b * t.sb + j * t.sn + h * t.sh + c * t.sd);
}

// out rows = o / l, lse = m + log l; a diagonal-only row (mask_diagonal, no other finite key)
// keeps its diagonal, as the paper's rule says: the row is value row i, lse its diagonal score.
template <class T, class S>
void store_rows(const AttentionArgs& a, int64_t b, int64_t h, int64_t i0, int64_t nr, const S* o, int64_t ldo,
                const S* m, const S* l, const S* diag) {
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t i = i0 + r;
    T* out = static_cast<T*>(a.out) + ((b * a.Nq + i) * a.H + h) * a.Dv;
    S* lse = static_cast<S*>(a.lse) + (b * a.H + h) * a.Nq + i;
    if (a.mask_diagonal && m[r] == neg_inf<S>() && i < a.Nk) {
      for (int64_t c = 0; c < a.Dv; ++c) store_as(out + c, value_at<T, S>(a, b, h, i, c));
      *lse = diag[r];
    } else {
      const S inv = S(1) / l[r];
      for (int64_t c = 0; c < a.Dv; ++c) store_as(out + c, o[r * ldo + c] * inv);
      *lse = m[r] + std::log(l[r]);
    }
  }
}

template <class S>
void reset_rows(int64_t nr, S* m, S* l, S* diag, S* o, int64_t ldo) {
  for (int64_t r = 0; r < nr; ++r) {
    m[r] = neg_inf<S>();
    l[r] = 0;
    diag[r] = neg_inf<S>();
  }
  std::memset(o, 0, static_cast<size_t>(nr * ldo) * sizeof(S));
}

template <class T, class V>
void forward_tasks(const AttentionArgs& a, int64_t begin, int64_t end) {
  using S = typename V::S;
  constexpr int W = V::W;
  const int64_t Nq = a.Nq, Nk = a.Nk, Dk = a.Dk, Dv = a.Dv, H = a.H;
  const int64_t nqb = (Nq + kBlockQ - 1) / kBlockQ;
  const int64_t Nkp = round_up(Nk, W), Dvp = round_up(Dv, W);
  const int64_t BK = round_up(min64(kBlockK, Nk), W);
  Scratch<S> qs(kBlockQ * Dk), kt(Dk * Nkp), vb(Nkp * Dvp), s(kBlockQ * BK), o(kBlockQ * Dvp);
  Scratch<S> m(kBlockQ), l(kBlockQ), diag(kBlockQ);
  const bool fused = fused_scores_apply<V>(a);
  int64_t packed = -1;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t qb = t % nqb, bh = t / nqb, b = bh / H, h = bh % H;
    if (bh != packed) {  // tasks of one chunk are consecutive: K and V are packed once per (b, h)
      kt.zero(Dk * Nkp);
      pack_cols<T>(a.k, b, h, Nk, Dk, kt.p, Nkp, 0);
      vb.zero(Nkp * Dvp);
      for (int p = 0, col = 0; p < a.n_parts; col += a.part_width[p], ++p)
        pack_rows<T>(a.part[p], b, h, 0, Nk, a.part_width[p], vb.p, Dvp, col);
      packed = bh;
    }
    const int64_t i0 = qb * kBlockQ, nr = min64(kBlockQ, Nq - i0);
    pack_rows<T>(a.q, b, h, i0, nr, Dk, qs.p, Dk, 0);
    reset_rows(nr, m.p, l.p, diag.p, o.p, Dvp);
    for (int64_t j0 = 0; j0 < Nk; j0 += kBlockK) {
      const int64_t bk = min64(kBlockK, Nk - j0), bkp = round_up(bk, W);
      gemm<V>(nr, bkp, Dk, qs.p, Dk, kt.p + j0, Nkp, s.p, BK, false);
      if (fused) {
        fused_scores_softmax_update<V>(a, b, h, i0, nr, j0, bk, bkp, s.p, BK, m.p, l.p, o.p, Dvp);
      } else {
        finish_scores<V>(a, b, h, i0, nr, j0, bk, bkp, s.p, BK, diag.p);
        online_softmax_update<V>(nr, bkp, s.p, BK, m.p, l.p, o.p, Dvp);
      }
      gemm<V>(nr, Dvp, bkp, s.p, BK, vb.p + j0 * Dvp, Dvp, o.p, Dvp, true);
    }
    store_rows<T>(a, b, h, i0, nr, o.p, Dvp, m.p, l.p, diag.p);
  }
}

template <class T, class V>
void forward_impl(const AttentionArgs& a) {
  const int64_t nqb = (a.Nq + kBlockQ - 1) / kBlockQ;
  a.parallel_for(a.B * a.H * nqb, const_cast<AttentionArgs*>(&a), [](void* ctx, int64_t begin, int64_t end) {
    forward_tasks<T, V>(*static_cast<const AttentionArgs*>(ctx), begin, end);
  });
}

// ------------------------------------------------------------------ backward

template <class T, class V>
void backward_tasks(const AttentionArgs& a, int64_t begin, int64_t end) {
  using S = typename V::S;
  constexpr int W = V::W;
  const int64_t Nq = a.Nq, Nk = a.Nk, Dk = a.Dk, Dv = a.Dv, H = a.H;
  const int64_t Nkp = round_up(Nk, W), Dkp = round_up(Dk, W), Dvp = round_up(Dv, W);
  const int64_t BK = round_up(min64(kBlockK, Nk), W);
  Scratch<S> qr(Nq * Dkp), kr(Nkp * Dkp), kt(Dk * Nkp), vt(Dv * Nkp), dor(Nq * Dvp);
  Scratch<S> delta(Nq), lse(Nq), dq(Nq * Dkp), dk(Nkp * Dkp), dval(Nkp * Dvp);
  Scratch<S> p(kBlockQ * BK), dp(kBlockQ * BK);
  Scratch<unsigned char> has_key(kBlockQ);
  const S scale = static_cast<S>(a.scale);
  const bool need_ds = (a.bias_kind == BiasKind::dense && a.dbias) || (a.bias_kind == BiasKind::table && a.dtable);
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    qr.zero(Nq * Dkp);
    kr.zero(Nkp * Dkp);
    kt.zero(Dk * Nkp);
    vt.zero(Dv * Nkp);
    dor.zero(Nq * Dvp);
    dq.zero(Nq * Dkp);
    dk.zero(Nkp * Dkp);
    dval.zero(Nkp * Dvp);
    pack_rows<T>(a.q, b, h, 0, Nq, Dk, qr.p, Dkp, 0);
    pack_rows<T>(a.k, b, h, 0, Nk, Dk, kr.p, Dkp, 0);
    pack_cols<T>(a.k, b, h, Nk, Dk, kt.p, Nkp, 0);
    for (int pi = 0, col = 0; pi < a.n_parts; col += a.part_width[pi], ++pi)
      pack_cols<T>(a.part[pi], b, h, Nk, a.part_width[pi], vt.p, Nkp, col);
    pack_rows<T>(a.dout, b, h, 0, Nq, Dv, dor.p, Dvp, 0);
    {
      const T* ob = static_cast<const T*>(a.o.ptr) + b * a.o.sb + h * a.o.sh;
      const S* lse_in = static_cast<const S*>(a.lse_in) + (b * H + h) * Nq;
      for (int64_t i = 0; i < Nq; ++i) {
        S acc = 0;
        for (int64_t c = 0; c < Dv; ++c) acc += dor.p[i * Dvp + c] * load_as<S>(ob + i * a.o.sn + c * a.o.sd);
        delta.p[i] = acc;
        lse.p[i] = lse_in[i];
      }
    }
    for (int64_t i0 = 0; i0 < Nq; i0 += kBlockQ) {
      const int64_t nr = min64(kBlockQ, Nq - i0);
      for (int64_t r = 0; r < nr; ++r) has_key.p[r] = 0;
      for (int64_t j0 = 0; j0 < Nk; j0 += kBlockK) {
        const int64_t bk = min64(kBlockK, Nk - j0), bkp = round_up(bk, W);
        gemm<V>(nr, bkp, Dk, qr.p + i0 * Dkp, Dkp, kt.p + j0, Nkp, p.p, BK, false);
        finish_scores<V>(a, b, h, i0, nr, j0, bk, bkp, p.p, BK, nullptr);
        gemm<V>(nr, bkp, Dv, dor.p + i0 * Dvp, Dvp, vt.p + j0, Nkp, dp.p, BK, false);
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t i = i0 + r;
          S* prow = p.p + r * BK;
          S* dprow = dp.p + r * BK;
          if (a.mask_diagonal && !has_key.p[r])
            for (int64_t c = 0; c < bk; ++c) has_key.p[r] |= prow[c] != neg_inf<S>();
          const V vl = V::set1(lse.p[i]), vd = V::set1(delta.p[i]), vs = V::set1(scale);
          if (need_ds) {  // dS (natural units) goes to the bias gradient, then s·dS to the GEMMs
            for (int64_t c = 0; c < bkp; c += W) {
              V pv = vexp(V::load(prow + c) - vl);
              pv.store(prow + c);
              (pv * (V::load(dprow + c) - vd)).store(dprow + c);
            }
            if (a.bias_kind == BiasKind::dense) {
              S* db = static_cast<S*>(a.dbias) + ((b * H + h) * Nq + i) * Nk + j0;
              for (int64_t c = 0; c < bk; ++c) db[c] = dprow[c];
            } else {
              S* dt = static_cast<S*>(a.dtable) + (b * H + h) * a.table_R;
              const int64_t* idx = a.index + i * a.index_si + j0 * a.index_sj;
              for (int64_t c = 0; c < bk; ++c) dt[idx[c * a.index_sj]] += dprow[c];
            }
            for (int64_t c = 0; c < bkp; c += W) (V::load(dprow + c) * vs).store(dprow + c);
          } else {
            for (int64_t c = 0; c < bkp; c += W) {
              V pv = vexp(V::load(prow + c) - vl);
              pv.store(prow + c);
              (pv * (V::load(dprow + c) - vd) * vs).store(dprow + c);
            }
          }
        }
        gemm<V>(nr, Dkp, bk, dp.p, BK, kr.p + j0 * Dkp, Dkp, dq.p + i0 * Dkp, Dkp, true);
        gemm<V, true>(bk, Dkp, nr, dp.p, BK, qr.p + i0 * Dkp, Dkp, dk.p + j0 * Dkp, Dkp, true);
        gemm<V, true>(bk, Dvp, nr, p.p, BK, dor.p + i0 * Dvp, Dvp, dval.p + j0 * Dvp, Dvp, true);
      }
      if (a.mask_diagonal) {
        // A diagonal-only row has P = one-hot(i): no score gradient, dValue[i] += dO[i].
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t i = i0 + r;
          if (!has_key.p[r] && i < Nk)
            for (int64_t c = 0; c < Dv; ++c) dval.p[i * Dvp + c] += dor.p[i * Dvp + c];
        }
      }
    }
    // Route the value gradient: "q" part → dq (Armour), "k" part → dk, "v" part → dv.
    for (int pi = 0, col = 0; pi < a.n_parts; col += a.part_width[pi], ++pi) {
      const int64_t wdt = a.part_width[pi];
      if (a.part_src[pi] == ValueSrc::v) {
        T* dv = static_cast<T*>(a.dv);
        for (int64_t j = 0; j < Nk; ++j)
          for (int64_t c = 0; c < wdt; ++c)
            store_as(dv + ((b * Nk + j) * H + h) * a.dv_width + c, dval.p[j * Dvp + col + c]);
      } else {
        S* dst_acc = a.part_src[pi] == ValueSrc::q ? dq.p : dk.p;
        for (int64_t j = 0; j < Nk; ++j)
          for (int64_t c = 0; c < wdt; ++c) dst_acc[j * Dkp + c] += dval.p[j * Dvp + col + c];
      }
    }
    T* dqo = static_cast<T*>(a.dq);
    T* dko = static_cast<T*>(a.dk);
    for (int64_t i = 0; i < Nq; ++i)
      for (int64_t c = 0; c < Dk; ++c) store_as(dqo + ((b * Nq + i) * H + h) * Dk + c, dq.p[i * Dkp + c]);
    for (int64_t j = 0; j < Nk; ++j)
      for (int64_t c = 0; c < Dk; ++c) store_as(dko + ((b * Nk + j) * H + h) * Dk + c, dk.p[j * Dkp + c]);
  }
}

template <class T, class V>
void backward_impl(const AttentionArgs& a) {
  a.parallel_for(a.B * a.H, const_cast<AttentionArgs*>(&a), [](void* ctx, int64_t begin, int64_t end) {
    backward_tasks<T, V>(*static_cast<const AttentionArgs*>(ctx), begin, end);
  });
}

// ------------------------------------------------------------------ bias + Hardswish epilogue

template <class S>
inline S hardswish(S x) {
  S t = x + S(3);
  t = t < S(0) ? S(0) : (t > S(6) ? S(6) : t);
  return x * t / S(6);
}

template <class T, class V>
void epilogue_rows(const EpilogueArgs& e, int64_t r0, int64_t r1) {
  using S = typename V::S;
  constexpr int W = V::W;
  T* y = static_cast<T*>(e.y);
  const T* bias = static_cast<const T*>(e.bias);
  const V three = V::set1(S(3)), six = V::set1(S(6)), zero = V::zero(), sixth = V::set1(S(1) / S(6));
  for (int64_t r = r0; r < r1; ++r) {
    T* row = y + r * e.ld;
    int64_t c = 0;
    if constexpr (sizeof(T) == sizeof(S)) {  // float / double rows: vectorised in place
      for (; c + W <= e.cols; c += W) {
        V x = V::load(reinterpret_cast<S*>(row) + c);
        if (bias) x = x + V::load(reinterpret_cast<const S*>(bias) + c);
        V t = vmin(six, vmax(zero, x + three));
        (x * t * sixth).store(reinterpret_cast<S*>(row) + c);
      }
    }
    for (; c < e.cols; ++c) {
      S x = load_as<S>(row + c);
      if (bias) x += load_as<S>(bias + c);
      store_as(row + c, hardswish(x));
    }
  }
}

template <class T, class V>
void epilogue_impl(const EpilogueArgs& e) {
  constexpr int64_t kRows = 16;
  e.parallel_for((e.rows + kRows - 1) / kRows, const_cast<EpilogueArgs*>(&e), [](void* ctx, int64_t begin, int64_t end) {
    const EpilogueArgs& args = *static_cast<const EpilogueArgs*>(ctx);
    epilogue_rows<T, V>(args, begin * kRows, min64(end * kRows, args.rows));
  });
}

// ------------------------------------------------------------------ entry points (dtype switch)

inline void attention_forward(const AttentionArgs& a) {
  switch (a.dtype) {
#ifdef ARMOUR_BF16_DOT
    case DType::bf16: return forward_bf16dot(a);  // attention_bf16dot.h
#else
    case DType::bf16: return forward_impl<bf16_t, VecF>(a);
#endif
    case DType::f64: return forward_impl<double, VecD>(a);
    default: return forward_impl<float, VecF>(a);
  }
}

inline void attention_backward(const AttentionArgs& a) {
  switch (a.dtype) {
    case DType::bf16: return backward_impl<bf16_t, VecF>(a);
    case DType::f64: return backward_impl<double, VecD>(a);
    default: return backward_impl<float, VecF>(a);
  }
}

inline void bias_hardswish(const EpilogueArgs& e) {
  switch (e.dtype) {
    case DType::bf16: return epilogue_impl<bf16_t, VecF>(e);
    case DType::f64: return epilogue_impl<double, VecD>(e);
    default: return epilogue_impl<float, VecF>(e);
  }
}
