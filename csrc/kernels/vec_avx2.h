// 8-lane float vectors on AVX2 + FMA (+ the polynomial exp, bf16 conversions). Included inside namespace
// armour::avx2 by isa_avx2.cpp, after <immintrin.h> and the target pragma.
#pragma once

struct VecF {
  using S = float;
  static constexpr int W = 8;
  static constexpr int MR = 4, NV = 3;  // GEMM block: 4 rows x 3 vectors = 12 accumulators (+3 B, 1 A) of 16 ymm
  __m256 v;
  static inline VecF load(const float* p) { return {_mm256_loadu_ps(p)}; }
  // lanes [0, n) from p, the others 0 (nothing read past p + n)
  static inline VecF load_n(const float* p, int64_t n) {
    const __m256i lane = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    return {_mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane))};
  }
  static inline VecF set1(float x) { return {_mm256_set1_ps(x)}; }
  static inline VecF zero() { return {_mm256_setzero_ps()}; }
  inline void store(float* p) const { _mm256_storeu_ps(p, v); }
  // lanes [0, n) to p (nothing written past p + n)
  inline void store_n(float* p, int64_t n) const {
    const __m256i lane = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane), v);
  }
};

inline VecF operator+(VecF a, VecF b) { return {_mm256_add_ps(a.v, b.v)}; }
inline VecF operator-(VecF a, VecF b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline VecF operator*(VecF a, VecF b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline VecF operator/(VecF a, VecF b) { return {_mm256_div_ps(a.v, b.v)}; }
// 1 / d for finite nonzero d (normal 1/d) to ~2^-22 (rcp and one Newton step).
inline VecF vrcp(VecF d) {
  const __m256 r = _mm256_rcp_ps(d.v);
  return {_mm256_mul_ps(r, _mm256_fnmadd_ps(d.v, r, _mm256_set1_ps(2.f)))};
}
inline VecF fmadd(VecF a, VecF b, VecF c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
// max/min return the second operand when either is NaN: callers put the data second.
inline VecF vmax(VecF a, VecF b) { return {_mm256_max_ps(a.v, b.v)}; }
inline VecF vmin(VecF a, VecF b) { return {_mm256_min_ps(a.v, b.v)}; }
// max that propagates NaN: a NaN lane of either operand gives NaN (a + b) there.
inline VecF vmax_nan(VecF a, VecF b) {
  return {_mm256_blendv_ps(_mm256_max_ps(a.v, b.v), _mm256_add_ps(a.v, b.v), _mm256_cmp_ps(a.v, b.v, _CMP_UNORD_Q))};
}
inline float hmax(VecF a) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}
inline float hsum(VecF a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// exp(x): same scheme as the AVX-512 version (see vec_avx512.h).
inline VecF vexp(VecF x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.0f);
  const __m256 under = _mm256_cmp_ps(x.v, lo, _CMP_LT_OQ);
  __m256 xc = _mm256_min_ps(hi, _mm256_max_ps(lo, x.v));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  __m256 y = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  return {_mm256_andnot_ps(under, y)};
}

// 2^x as the AVX-512 version (see vec_avx512.h), 2^n built in the exponent bits. x is raised to
// -125 so every product stays a normal number (a denormal result costs a microcode assist), and
// lanes below -125 are then cleared to exactly 0; NaN stays NaN.
template <int Deg>
inline VecF vexp2(VecF x) {
  static_assert(Deg == 3 || Deg == 5, "vexp2: degree 3 or 5");
  const __m256 under = _mm256_cmp_ps(x.v, _mm256_set1_ps(-125.0f), _CMP_LT_OQ);
  const __m256 xc = _mm256_max_ps(_mm256_set1_ps(-125.0f), x.v);
  const __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(xc, n);
  const float* c = Deg == 3 ? kExp2Deg3 : kExp2Deg5;
  __m256 p = _mm256_set1_ps(c[0]);
  for (int i = 1; i <= Deg; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c[i]));  // Horner, unrolled by the compiler
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return {_mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)))};
}

// bf16 <-> float, 8 lanes (round to nearest even on the integer bits; a NaN stays a quiet NaN).
inline VecF load_bf16(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
}
inline void store_bf16(uint16_t* p, VecF x) {
  const __m256i u = _mm256_castps_si256(x.v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), nan);
  // 32-bit lanes hold values < 2^16: packus over the two 128-bit halves, then put them in order
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xd8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
inline void store_bf16_n(uint16_t* p, VecF x, int64_t n) {
  uint16_t tmp[8];
  store_bf16(tmp, x);
  std::memcpy(p, tmp, static_cast<size_t>(n) * sizeof(uint16_t));
}

// Gathers of one element from each of W rows `stride` elements apart (operand packing); the
// 32-bit lane indices must not overflow: gather_ok(stride).
inline bool gather_ok(int64_t stride) { return stride >= 0 && stride < (int64_t{1} << 31) / 8; }
inline __m256i gather_index(int64_t stride) {
  return _mm256_mullo_epi32(_mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0), _mm256_set1_epi32(static_cast<int32_t>(stride)));
}
inline VecF gather_f32(const float* p, int64_t stride) { return {_mm256_i32gather_ps(p, gather_index(stride), 4)}; }
// The bf16 pair (p[k·stride], p[k·stride + 1]) of each row k, as two float vectors.
inline void gather_bf16_pairs(const uint16_t* p, int64_t stride, VecF& even, VecF& odd) {
  const __m256i w = _mm256_i32gather_epi32(reinterpret_cast<const int*>(p), gather_index(stride), 2);
  even = {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
  odd = {_mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(static_cast<int32_t>(0xffff0000u))))};
}

// The AVX-512 transpose primitives (vec_avx512.h), declared for the generic code's W == 16 branches;
// never called on this path.
template <class X> void transpose16_words(const void* p, int64_t row_bytes, int64_t rows, int64_t cols, X* out);
template <class X> VecF words_as_f32(X w);
template <class X> VecF words_lo_bf16(X w);
template <class X> VecF words_hi_bf16(X w);
