// 16-lane float vectors on AVX-512F (+ the polynomial exp). Included inside namespace
// armour::avx512 by isa_avx512.cpp, after <immintrin.h> and the target pragma.
#pragma once

struct VecF {
  using S = float;
  static constexpr int W = 16;
  static constexpr int MR = 6, NV = 2;  // GEMM block: 6 rows x 2 vectors = 12 accumulators of 32 zmm
  __m512 v;
  static inline VecF load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static inline VecF set1(float x) { return {_mm512_set1_ps(x)}; }
  static inline VecF zero() { return {_mm512_setzero_ps()}; }
  inline void store(float* p) const { _mm512_storeu_ps(p, v); }
};

inline VecF operator+(VecF a, VecF b) { return {_mm512_add_ps(a.v, b.v)}; }
inline VecF operator-(VecF a, VecF b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline VecF operator*(VecF a, VecF b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline VecF fmadd(VecF a, VecF b, VecF c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
// max/min return the second operand when either is NaN: callers put the data second.
inline VecF vmax(VecF a, VecF b) { return {_mm512_max_ps(a.v, b.v)}; }
inline VecF vmin(VecF a, VecF b) { return {_mm512_min_ps(a.v, b.v)}; }
inline float hmax(VecF a) { return _mm512_reduce_max_ps(a.v); }
inline float hsum(VecF a) { return _mm512_reduce_add_ps(a.v); }

// exp(x): Cody-Waite range reduction x = n ln2 + r, degree-6 polynomial for e^r on
// [-ln2/2, ln2/2] (Cephes coefficients), 2^n built in the exponent bits. ~2 ulp.
// x below the float range (and -inf) gives exactly 0, NaN stays NaN.
inline VecF vexp(VecF x) {
  const __m512 lo = _mm512_set1_ps(-87.33654f), hi = _mm512_set1_ps(88.0f);
  const __mmask16 under = _mm512_cmp_ps_mask(x.v, lo, _CMP_LT_OQ);
  __m512 xc = _mm512_min_ps(hi, _mm512_max_ps(lo, x.v));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  y = _mm512_mul_ps(y, _mm512_castsi512_ps(e));
  return {_mm512_mask_mov_ps(y, under, _mm512_setzero_ps())};
}
