// What every attention kernel of one ISA shares: element conversions, scratch buffers, the work
// split into chunks of query rows, the packing of strided operands, score finishing (scale, bias,
// diagonal mask), the online-softmax step and the output store. Written once against a vector type
// V (VecF: AVX-512 / AVX2 / one lane; VecD: scalar doubles) and a storage type T (float, bf16_t,
// double).
//
// Included inside namespace armour::<isa> by isa_<isa>.cpp after the ISA's vector headers
// (vec_scalar.h, then vec_baseline.h / vec_avx2.h / vec_avx512.h: VecF, VecD, vexp2, load_bf16,
// store_bf16, gather_f32); the standard headers <cmath>, <cstdint>, <cstdlib>, <cstring>, <new>
// and kernels/kernel_api.h are included by that file before its target pragma, so no standard
// inline function is compiled for the ISA (see kernels/kernel_api.h).
//
// Maths and layouts: docs/attention.md (forward, backward, diagonal mask), docs/numerics.md
// (fully masked rows), docs/layouts.md (the launcher contract).
#pragma once

constexpr int64_t kBlockK = 256;  // keys per tile (the online softmax runs over key tiles); query
                                  // rows per tile: AttentionArgs::block_q

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

template <class S>
inline S neg_inf() { return -static_cast<S>(__builtin_inf()); }
template <class S>
inline S pos_inf() { return static_cast<S>(__builtin_inf()); }

// Scores live in log2 units inside the kernels (score · log2 e), so the softmax's exponential is
// 2^x: one multiply fewer per element than e^x, folded into the scale. lse is stored in natural
// units (lse = ln 2 · (m + log2 l)).
constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;

// Degree of the 2^x polynomial (vexp2) for outputs of storage type T: bf16 results (rounded to
// 4e-3) need far less than fp32 ones.
template <class T>
constexpr int exp_degree() { return sizeof(T) == 2 ? 3 : 5; }

// ------------------------------------------------------------------ element conversions

template <class S> inline S load_as(const float* p) { return static_cast<S>(*p); }
template <class S> inline S load_as(const double* p) { return static_cast<S>(*p); }
template <class S> inline S load_as(const bf16_t* p) { return static_cast<S>(bf16_to_float(p->bits)); }
template <class S> inline S load_as(const uint16_t* p) { return static_cast<S>(bf16_to_float(*p)); }

inline void store_as(float* p, float x) { *p = x; }
inline void store_as(float* p, double x) { *p = static_cast<float>(x); }
inline void store_as(double* p, double x) { *p = x; }
inline void store_as(bf16_t* p, float x) { p->bits = float_to_bf16(x); }
inline void store_as(uint16_t* p, float x) { *p = float_to_bf16(x); }

// Bias / table elements: their dtype is chosen at run time (fp32 tables with bf16 activations).
template <class S>
inline S load_dyn(const void* base, int64_t off, DType dt) {
  switch (dt) {
    case DType::bf16: return load_as<S>(static_cast<const bf16_t*>(base) + off);
    case DType::f64: return load_as<S>(static_cast<const double*>(base) + off);
    default: return load_as<S>(static_cast<const float*>(base) + off);
  }
}

// W consecutive elements of storage type T as a vector of V (float or double lanes).
template <class V> inline V load_vec(const typename V::S* p) { return V::load(p); }
template <class V> inline V load_vec(const bf16_t* p) { return load_bf16(&p->bits); }
template <class V> inline V load_vec(const uint16_t* p) { return load_bf16(p); }
template <class V> inline void store_vec(typename V::S* p, V x) { x.store(p); }
template <class V> inline void store_vec(bf16_t* p, V x) { store_bf16(&p->bits, x); }
template <class V> inline void store_vec(uint16_t* p, V x) { store_bf16(p, x); }
// lanes [0, n) only
template <class V> inline void store_vec_n(typename V::S* p, V x, int64_t n) { x.store_n(p, n); }
template <class V> inline void store_vec_n(bf16_t* p, V x, int64_t n) { store_bf16_n(&p->bits, x, n); }
template <class V> inline void store_vec_n(uint16_t* p, V x, int64_t n) { store_bf16_n(p, x, n); }

// dst[0, n) = src[0, n · sd) converted (vectorised for a unit stride).
template <class V, class T, class D>
inline void load_row(const T* src, int64_t sd, int64_t n, D* dst) {
  using S = typename V::S;
  int64_t d = 0;
  if (sd == 1) {
    for (; d + V::W <= n; d += V::W) store_vec<V>(dst + d, load_vec<V>(src + d));
    for (; d < n; ++d) store_as(dst + d, load_as<S>(src + d));
    return;
  }
  for (; d < n; ++d) store_as(dst + d, load_as<S>(src + d * sd));
}

// dst[0, n) = mul · src[0, n) converted to T (src in the accumulation type).
template <class V, class T>
inline void store_row(const typename V::S* src, int64_t n, typename V::S mul, T* dst) {
  using S = typename V::S;
  const V vm = V::set1(mul);
  int64_t d = 0;
  for (; d + V::W <= n; d += V::W) store_vec<V>(dst + d, V::load(src + d) * vm);
  for (; d < n; ++d) store_as(dst + d, static_cast<S>(src[d] * mul));
}

// Aligned scratch owned by one task (plain malloc: no std templates in ISA code).
template <class S>
struct Scratch {
  S* p;
  explicit Scratch(int64_t n) {
    size_t bytes = static_cast<size_t>(round_up(n < 1 ? 1 : n, 32)) * sizeof(S);
    p = static_cast<S*>(std::aligned_alloc(64, round_up(static_cast<int64_t>(bytes), 64)));
    if (!p) throw std::bad_alloc();  // at::parallel_for rethrows it on the calling thread
  }
  ~Scratch() { std::free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void zero(int64_t n) { std::memset(p, 0, static_cast<size_t>(n) * sizeof(S)); }
};

// ------------------------------------------------------------------ the work split

// One (b, h) run of a chunk's query rows: rows [i_begin, i_end) of pair (b, h); slot is -1 when
// the chunk owns the whole pair, else the partial-gradient slot of this piece (2c for the chunk's
// first run, 2c + 1 for its last); next_b / next_h: the chunk's next pair (-1 at its last).
struct Run {
  int64_t b, h, i_begin, i_end, slot, next_b, next_h;
};

// Calls body(run) for each (b, h) run of chunk c's query rows (see attention_chunks in kernel_api.h).
template <class Body>
inline void for_each_run(const AttentionArgs& a, int64_t c, Body&& body) {
  const int64_t start = attention_chunk_start(c, a.n_chunks, a.B, a.H, a.Nq);
  const int64_t end = attention_chunk_start(c + 1, a.n_chunks, a.B, a.H, a.Nq);
  for (int64_t r = start; r < end;) {
    const int64_t bh = r / a.Nq, i0 = r % a.Nq;
    const int64_t i1 = min64(a.Nq, i0 + (end - r));
    const bool whole = i0 == 0 && i1 == a.Nq;
    const bool last = r + (i1 - i0) >= end;
    body(Run{bh / a.H, bh % a.H, i0, i1, whole ? int64_t{-1} : (r == start ? 2 * c : 2 * c + 1),
             last ? int64_t{-1} : (bh + 1) / a.H, last ? int64_t{-1} : (bh + 1) % a.H});
    r += i1 - i0;
  }
}

// Runs chunk(a, g, c) for every chunk c in the parallel loop; a task that used brgemm releases its
// AMX state at the end of its share (GemmProvider::release).
template <class G, void (*Chunk)(const AttentionArgs&, const G&, int64_t)>
void run_chunks(const AttentionArgs& a, const G& g) {
  struct Ctx {
    const AttentionArgs* a;
    const G* g;
  } ctx{&a, &g};
  a.parallel_for(a.n_chunks, &ctx, [](void* p, int64_t begin, int64_t end) {
    const Ctx& c = *static_cast<const Ctx*>(p);
    for (int64_t k = begin; k < end; ++k) Chunk(*c.a, *c.g, k);
    if (c.a->gemm.release) c.a->gemm.release();
  });
}

// ------------------------------------------------------------------ packing (strided → scratch)

template <class T>
inline const T* row_ptr(const Strided4& t, int64_t b, int64_t n, int64_t h) {
  return static_cast<const T*>(t.ptr) + b * t.sb + n * t.sn + h * t.sh;
}

// Software prefetch of rows [n0, n1) of t[b, :, h, :D] (every cache line of each row). The inputs
// are strided views into a large projection output, read from memory once per (b, h): prefetching
// the next (b, h)'s rows while the current one computes hides that latency, which the hardware
// prefetchers miss at strides of kilobytes.
template <class T>
inline void prefetch_rows(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t n1, int64_t D) {
  const int64_t bytes = (D - 1) * t.sd * static_cast<int64_t>(sizeof(T)) + static_cast<int64_t>(sizeof(T));
  for (int64_t n = n0; n < n1; ++n) {
    const char* p = reinterpret_cast<const char*>(row_ptr<T>(t, b, n, h));
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 3);
    __builtin_prefetch(p + bytes - 1, 0, 3);
  }
}

// Prefetches, during query tile `tile` of `tiles` of the current run, that share of the rows the
// next run reads first: its keys and value parts, its queries (and, in the backward, dO rows).
template <class T>
void prefetch_next_run(const AttentionArgs& a, const Run& run, int64_t tile, int64_t tiles, bool backward) {
  if (run.next_b < 0) return;
  const int64_t b = run.next_b, h = run.next_h;
  const int64_t k0 = a.Nk * tile / tiles, k1 = a.Nk * (tile + 1) / tiles;
  prefetch_rows<T>(a.k, b, h, k0, k1, a.Dk);
  for (int p = 0; p < a.n_parts; ++p)
    if (a.part_src[p] == ValueSrc::v) prefetch_rows<T>(a.part[p], b, h, k0, k1, a.part_width[p]);
  const int64_t q1 = min64(a.Nq, a.Nq * (tile + 1) / tiles);  // the next run starts at query 0
  const int64_t q0 = a.Nq * tile / tiles;
  prefetch_rows<T>(a.q, b, h, q0, q1, a.Dk);
  if (backward) prefetch_rows<T>(a.dout, b, h, q0, q1, a.Dv);
}

// The A operand of rows [i0, i0 + nr) of t[b, :, h, :D]: the input itself when the engine reads it
// in place (sets *ld to its row stride), else packed into `buf` (row length ld_buf).
template <class G, class T>
const typename G::Op* a_rows_operand(const Strided4& t, bool in_place, int64_t b, int64_t h, int64_t i0, int64_t nr,
                                     int64_t D, typename G::Op* buf, int64_t ld_buf, int64_t* ld) {
  if (in_place) {
    *ld = t.sn;
    return reinterpret_cast<const typename G::Op*>(row_ptr<T>(t, b, i0, h));
  }
  G::template pack_a_rows<T>(t, b, h, i0, nr, D, buf, ld_buf);
  *ld = ld_buf;
  return buf;
}

// Row-major: dst[n * ld + col0 + d] = t[b, n0 + n, h, d] for n < cnt, d < D.
template <class V, class T, class D>
void pack_rows(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t cnt, int64_t Dw, D* dst, int64_t ld,
               int64_t col0) {
  for (int64_t n = 0; n < cnt; ++n) load_row<V>(row_ptr<T>(t, b, n0 + n, h), t.sd, Dw, dst + n * ld + col0);
}

// Feature-major (transposed): dst[(row0 + d) * ld + n] = t[b, n0 + n, h, d] for n < cnt, d < D.
// pad_full: the columns [cnt, round_up(cnt, W)) of dst are padding, written with zeros (so the
// caller need not clear them); otherwise nothing past cnt is written. On AVX-512 the rows go
// through 16×16 transposes of 32-bit words (a float, or a pair of bf16 features); elsewhere through
// gathers (one vector per feature; bf16 in 32-bit pairs of features, so no read goes past a row);
// whatever is left, element by element.
template <class V, class T, class D>
void pack_cols(const Strided4& t, int64_t b, int64_t h, int64_t n0, int64_t cnt, int64_t Dw, D* dst, int64_t ld,
               int64_t row0, bool pad_full = false) {
  using S = typename V::S;
  constexpr int W = V::W;
  int64_t n = 0;
  if constexpr (W == 16 && (sizeof(T) == 4 || sizeof(T) == 2)) {
    if (t.sd == 1) {
      for (; n < cnt; n += 16) {
        const int64_t rows = min64(16, cnt - n), lanes = pad_full ? 16 : rows;
        const T* src = row_ptr<T>(t, b, n0 + n, h);
        __m512i w[16];
        if constexpr (sizeof(T) == 4) {
          for (int64_t d0 = 0; d0 < Dw; d0 += 16) {
            const int64_t cols = min64(16, Dw - d0);
            transpose16_words(src + d0, t.sn * 4, rows, cols, w);
            for (int64_t k = 0; k < cols; ++k) store_vec_n<V>(dst + (row0 + d0 + k) * ld + n, words_as_f32(w[k]), lanes);
          }
        } else {
          const uint16_t* s16 = &src->bits;
          for (int64_t d0 = 0; d0 + 1 < Dw; d0 += 32) {
            const int64_t pairs = min64(16, (Dw - d0) / 2);
            transpose16_words(s16 + d0, t.sn * 2, rows, pairs, w);
            for (int64_t k = 0; k < pairs; ++k) {
              store_vec_n<V>(dst + (row0 + d0 + 2 * k) * ld + n, words_lo_bf16(w[k]), lanes);
              store_vec_n<V>(dst + (row0 + d0 + 2 * k + 1) * ld + n, words_hi_bf16(w[k]), lanes);
            }
          }
          if (Dw & 1)
            for (int64_t k = 0; k < lanes; ++k)
              store_as(dst + (row0 + Dw - 1) * ld + n + k, k < rows ? load_as<S>(s16 + k * t.sn + Dw - 1) : S(0));
        }
      }
      return;
    }
  } else if constexpr (W > 1 && sizeof(T) == 4) {
    if (gather_ok(t.sn))
      for (; n + W <= cnt; n += W) {
        const T* src = row_ptr<T>(t, b, n0 + n, h);
        for (int64_t d = 0; d < Dw; ++d) store_vec<V>(dst + (row0 + d) * ld + n, gather_f32(src + d * t.sd, t.sn));
      }
  } else if constexpr (W > 1 && sizeof(T) == 2) {
    if (t.sd == 1 && gather_ok(t.sn))
      for (; n + W <= cnt; n += W) {
        const uint16_t* src = &row_ptr<T>(t, b, n0 + n, h)->bits;
        int64_t d = 0;
        for (; d + 2 <= Dw; d += 2) {
          V even, odd;
          gather_bf16_pairs(src + d, t.sn, even, odd);
          store_vec<V>(dst + (row0 + d) * ld + n, even);
          store_vec<V>(dst + (row0 + d + 1) * ld + n, odd);
        }
        for (; d < Dw; ++d)
          for (int64_t k = 0; k < W; ++k) store_as(dst + (row0 + d) * ld + n + k, load_as<S>(src + k * t.sn + d));
      }
  }
  const int64_t end = pad_full ? round_up(cnt, W) : cnt;
  for (; n < end; ++n) {
    const T* src = n < cnt ? row_ptr<T>(t, b, n0 + n, h) : nullptr;
    for (int64_t d = 0; d < Dw; ++d) store_as(dst + (row0 + d) * ld + n, src ? load_as<S>(src + d * t.sd) : S(0));
  }
}

// dst[r * ld_dst + c] (=, or += with Add) src[c * ld_src + r], r < R, c < C: an accumulation-type
// matrix stored transposed in storage type T (dkᵀ and the value gradientᵀ back to (B, N, H, D)
// rows), or added transposed into one in the accumulation type (Armour's value gradient into dq).
template <class V, bool Add = false, class T>
void store_transposed(const typename V::S* src, int64_t ld_src, int64_t R, int64_t C, T* dst, int64_t ld_dst) {
  using S = typename V::S;
  constexpr int W = V::W;
  auto put = [&](T* p, V x, int64_t n) {
    if constexpr (Add) {
      x = x + V::load_n(p, n);
      x.store_n(p, n);
    } else {
      store_vec_n<V>(p, x, n);
    }
  };
  if constexpr (W == 16 && sizeof(S) == 4) {
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      const int64_t cs = min64(16, C - c0);
      for (int64_t r0 = 0; r0 < R; r0 += 16) {
        __m512i w[16];
        const int64_t rows = min64(16, R - r0);
        transpose16_words(src + c0 * ld_src + r0, ld_src * 4, cs, rows, w);
        for (int64_t k = 0; k < rows; ++k) put(dst + (r0 + k) * ld_dst + c0, words_as_f32(w[k]), cs);
      }
    }
    return;
  }
  int64_t c0 = 0;
  if constexpr (W > 1 && sizeof(S) == 4) {
    if (gather_ok(ld_src))
      for (; c0 + W <= C; c0 += W)
        for (int64_t r = 0; r < R; ++r) put(dst + r * ld_dst + c0, gather_f32(src + c0 * ld_src + r, ld_src), W);
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = c0; c < C; ++c) {
      if constexpr (Add)
        dst[r * ld_dst + c] += src[c * ld_src + r];
      else
        store_as(dst + r * ld_dst + c, src[c * ld_src + r]);
    }
}

// ------------------------------------------------------------------ scores of one tile

// A vector whose lanes [0, n) are 0 and the rest -inf (0 < n ≤ W): added to a tile's last partial
// vector, it turns the padding lanes into -inf scores.
template <class V>
inline V pad_lanes(int64_t n) {
  using S = typename V::S;
  static const S table[32] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                              neg_inf<S>(), neg_inf<S>(), neg_inf<S>(), neg_inf<S>(), neg_inf<S>(), neg_inf<S>(),
                              neg_inf<S>(), neg_inf<S>(), neg_inf<S>(), neg_inf<S>(), neg_inf<S>(), neg_inf<S>(),
                              neg_inf<S>(), neg_inf<S>(), neg_inf<S>(), neg_inf<S>()};
  return V::load(table + 16 - n);
}

constexpr int64_t kBiasAhead = 4;  // rows (4, 8 and 16 measured alike on a cold LeViT-128S call)
template <class S>
constexpr int64_t kLineFloats = 64 / sizeof(S);

// Row i of a key tile, in log2 units: s[c] = log2 e · (scale · s[c] + bias[b, h, i, j0 + c]) for
// c < bk (only these are read: a brgemm product writes no padding); the padding [bk, bkp), bkp =
// round_up(bk, W), → -inf; with mask_diagonal the diagonal → -inf (its score saved in
// *diag when diag is given). Returns the row maximum when need_max (padding included: -inf does
// not count).
template <class V>
typename V::S finish_row(const AttentionArgs& a, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t bk, int64_t bkp,
                         typename V::S* row, typename V::S* diag, bool need_max = true) {
  using S = typename V::S;
  constexpr int W = V::W;
  const S scale = static_cast<S>(a.scale * kLog2e), log2e = static_cast<S>(kLog2e);
  const V vscale = V::set1(scale), vlog2e = V::set1(log2e);
  const int64_t full = bk / W * W;
  const bool diag_here = a.mask_diagonal && i >= j0 && i < j0 + bk;
  const S* bp = nullptr;  // a dense bias row in the accumulation type with unit key stride
  if (a.bias_kind == BiasKind::dense && a.bias_sj == 1 && a.bias_dtype == (sizeof(S) == 4 ? DType::f32 : DType::f64))
    bp = static_cast<const S*>(a.bias) + b * a.bias_sb + h * a.bias_sh + i * a.bias_si + j0;
  // The same columns of the bias row kBiasAhead rows on, prefetched into L2 while this row is finished:
  // a dense bias (LeViT's: 615 KB per stage-1 block in float32) is read once per call, and on a call
  // that finds it out of cache (a served model between other work) the hardware prefetcher alone
  // leaves each row's lines to arrive one after another.
  const S* ahead = bp && i + kBiasAhead < a.Nq ? bp + kBiasAhead * a.bias_si : nullptr;
  if (!diag_here && (bp || a.bias_kind == BiasKind::none)) {
    // The common case in one pass: scale, bias, padding and the row max (two accumulators, so the
    // max's latency chain does not bound the loop). The last, partial vector gets -inf in its
    // padding lanes by adding a vector of 0 | -inf, and reads the bias with a masked load.
    if (ahead)
      for (int64_t c = 0; c < bk; c += kLineFloats<S>) __builtin_prefetch(ahead + c, 0, 2);
    V mx0 = V::set1(neg_inf<S>()), mx1 = mx0;
    int64_t c = 0;
    for (; c + 2 * W <= full; c += 2 * W) {
      V x0 = V::load(row + c) * vscale, x1 = V::load(row + c + W) * vscale;
      if (bp) {
        x0 = fmadd(V::load(bp + c), vlog2e, x0);
        x1 = fmadd(V::load(bp + c + W), vlog2e, x1);
      }
      x0.store(row + c);
      x1.store(row + c + W);
      mx0 = vmax(mx0, x0);
      mx1 = vmax(mx1, x1);
    }
    for (; c < full; c += W) {
      V x = V::load(row + c) * vscale;
      if (bp) x = fmadd(V::load(bp + c), vlog2e, x);
      x.store(row + c);
      mx0 = vmax(mx0, x);
    }
    if (c < bkp) {  // bk < bkp: a partial vector (W > 1); its lanes past bk may be unwritten
      const int64_t rem = bk - c;
      V x = V::load_n(row + c, rem) * vscale + pad_lanes<V>(rem);
      if (bp) x = fmadd(V::load_n(bp + c, rem), vlog2e, x);
      x.store(row + c);
      mx0 = vmax(mx0, x);
    }
    return hmax(vmax(mx0, mx1));
  }
  for (int64_t c = full; c < bkp; ++c) row[c] = c < bk ? row[c] : neg_inf<S>();
  if (bp) {
    int64_t c = 0;
    for (; c < full; c += W) fmadd(V::load(row + c), vscale, V::load(bp + c) * vlog2e).store(row + c);
    for (; c < bk; ++c) row[c] = row[c] * scale + bp[c] * log2e;
  } else if (a.bias_kind == BiasKind::dense) {
    const int64_t off = b * a.bias_sb + h * a.bias_sh + i * a.bias_si + j0 * a.bias_sj;
    for (int64_t c = 0; c < bk; ++c)
      row[c] = row[c] * scale + load_dyn<S>(a.bias, off + c * a.bias_sj, a.bias_dtype) * log2e;
  } else if (a.bias_kind == BiasKind::table) {
    const int64_t* idx = a.index + i * a.index_si + j0 * a.index_sj;
    const int64_t off = h * a.bias_sh;
    for (int64_t c = 0; c < bk; ++c)
      row[c] = row[c] * scale + load_dyn<S>(a.bias, off + idx[c * a.index_sj] * a.bias_sj, a.bias_dtype) * log2e;
  } else {
    for (int64_t c = 0; c < full; c += W) (V::load(row + c) * vscale).store(row + c);
    for (int64_t c = full; c < bk; ++c) row[c] *= scale;
  }
  if (diag_here) {
    if (diag) *diag = row[i - j0];
    row[i - j0] = neg_inf<S>();
  }
  if (!need_max) return S(0);
  V mx = V::set1(neg_inf<S>());
  for (int64_t c = 0; c < bkp; c += W) mx = vmax(mx, V::load(row + c));
  return hmax(mx);
}

// ------------------------------------------------------------------ forward pieces

// One row's online-softmax step once its maximum `blk` over this key tile is known (log2 units):
// p[c] = 2^(row[c] - m_new) (written in the GEMM operand type P: the score row itself, or bf16),
// the running max m and sum l are updated and, past the first tile, the output row o is rescaled
// by 2^(m_old - m_new). A row with no finite score so far keeps m = -inf and l = 0 (its p are 0). A
// NaN score makes l NaN for good (NaN · alpha + total), whether or not the max saw it.
template <class V, int Deg, class P>
inline void softmax_row(const typename V::S* row, int64_t bkp, typename V::S blk, typename V::S& m,
                        typename V::S& l, P* p, typename V::S* o, int64_t ldo, bool first) {
  using S = typename V::S;
  constexpr int W = V::W;
  const S m_old = m;
  const S m_new = blk > m_old ? blk : m_old;
  const S m_use = m_new == neg_inf<S>() ? S(0) : m_new;  // all -inf so far: avoid -inf - -inf
  const V vm = V::set1(m_use);
  V sum0 = V::zero(), sum1 = V::zero();  // two chains, so the adds' latency does not bound the loop
  int64_t c = 0;
  for (; c + 2 * W <= bkp; c += 2 * W) {
    const V e0 = vexp2<Deg>(V::load(row + c) - vm), e1 = vexp2<Deg>(V::load(row + c + W) - vm);
    store_vec<V>(p + c, e0);
    store_vec<V>(p + c + W, e1);
    sum0 = sum0 + e0;
    sum1 = sum1 + e1;
  }
  for (; c < bkp; c += W) {
    const V e = vexp2<Deg>(V::load(row + c) - vm);
    store_vec<V>(p + c, e);
    sum0 = sum0 + e;
  }
  const S total = hsum(sum0 + sum1);
  m = m_new;
  if (first) {
    l = total;
    return;
  }
  const S alpha = std::exp2(m_old - m_use);  // m_old = -inf: 0, o is 0 · value (NaN there stays NaN)
  l = l * alpha + total;
  if (alpha != S(1)) {
    const V va = V::set1(alpha);
    for (int64_t c = 0; c < ldo; c += W) (V::load(o + c) * va).store(o + c);
  }
}

// Element c of value row j of (b, h), read from its part in place.
template <class T, class S>
S value_at(const AttentionArgs& a, int64_t b, int64_t h, int64_t j, int64_t c) {
  int p = 0;
  for (; p + 1 < a.n_parts && c >= a.part_width[p]; ++p) c -= a.part_width[p];
  const Strided4& t = a.part[p];
  return load_as<S>(row_ptr<T>(t, b, j, h) + c * t.sd);
}

// out row = o / l and lse = ln 2 · (m + log2 l). A NaN score anywhere in the row (NaN in q, k or the
// bias, +inf - inf, a +inf score) made l NaN (2^(NaN - m) is NaN whatever m; the row max may have
// dropped it: max instructions return a number when one operand is NaN), so out and lse come out NaN
// as SDPA's. A row whose every score is -inf has m = -inf and l = 0 (nothing else gives l = 0): either
// diagonal-only (mask_diagonal, the diagonal score not -inf: the paper's rule keeps it, so the row is
// value row i and lse its diagonal score; a NaN or +inf diagonal makes the row NaN, softmax of it
// alone) or fully masked: P = 0, so out = 0 · value (what the P·V product left in o: 0, or NaN in a
// column where a value row has NaN or inf, as SDPA's 0 · V) and lse = +inf (kernel_api.h).
template <class V, class T>
void store_out_rows(const AttentionArgs& a, int64_t b, int64_t h, int64_t i0, int64_t nr, const typename V::S* o,
                    int64_t ldo, const typename V::S* m, const typename V::S* l, const typename V::S* diag) {
  using S = typename V::S;
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t i = i0 + r;
    T* out = static_cast<T*>(a.out) + ((b * a.Nq + i) * a.H + h) * a.Dv;
    S* lse = static_cast<S*>(a.lse) + (b * a.H + h) * a.Nq + i;
    const S* orow = o + r * ldo;
    if (!(m[r] == neg_inf<S>() && l[r] == S(0))) {  // a finite score, or a NaN one
      store_row<V>(orow, a.Dv, S(1) / l[r], out);
      *lse = static_cast<S>(kLn2) * (m[r] + std::log2(l[r]));
    } else if (a.mask_diagonal && i < a.Nk && diag[r] != neg_inf<S>()) {
      const S poison = diag[r] - diag[r];  // 0; NaN for a NaN or +inf diagonal score
      for (int64_t c = 0; c < a.Dv; ++c) store_as(out + c, orow[c] + value_at<T, S>(a, b, h, i, c) + poison);
      *lse = static_cast<S>(kLn2) * diag[r] + poison;
    } else {
      store_row<V>(orow, a.Dv, S(1), out);
      *lse = pos_inf<S>();
    }
  }
}
