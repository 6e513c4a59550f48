// 16-lane float vectors on AVX-512F (+ the polynomial exp, bf16 conversions). Included inside
// namespace armour::<isa> by isa_avx512.cpp / isa_avx512bf16.cpp, after <immintrin.h> and the
// target pragma.
#pragma once

struct VecF {
  using S = float;
  static constexpr int W = 16;
  static constexpr int MR = 6, NV = 2;  // GEMM block: 6 rows x 2 vectors = 12 accumulators of 32 zmm
  __m512 v;
  static inline VecF load(const float* p) { return {_mm512_loadu_ps(p)}; }
  // lanes [0, n) from p, the others 0 (nothing read past p + n)
  static inline VecF load_n(const float* p, int64_t n) {
    return {_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p)};
  }
  static inline VecF set1(float x) { return {_mm512_set1_ps(x)}; }
  static inline VecF zero() { return {_mm512_setzero_ps()}; }
  inline void store(float* p) const { _mm512_storeu_ps(p, v); }
  // lanes [0, n) to p (nothing written past p + n)
  inline void store_n(float* p, int64_t n) const { _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), v); }
};

inline VecF operator+(VecF a, VecF b) { return {_mm512_add_ps(a.v, b.v)}; }
inline VecF operator-(VecF a, VecF b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline VecF operator*(VecF a, VecF b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline VecF operator/(VecF a, VecF b) { return {_mm512_div_ps(a.v, b.v)}; }
// 1 / d for finite nonzero d (normal 1/d) to ~2^-27 (rcp14 and one Newton step): a quarter of a division's cost.
inline VecF vrcp(VecF d) {
  const __m512 r = _mm512_rcp14_ps(d.v);
  return {_mm512_mul_ps(r, _mm512_fnmadd_ps(d.v, r, _mm512_set1_ps(2.f)))};
}
inline VecF fmadd(VecF a, VecF b, VecF c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
// max/min return the second operand when either is NaN: callers put the data second.
inline VecF vmax(VecF a, VecF b) { return {_mm512_max_ps(a.v, b.v)}; }
inline VecF vmin(VecF a, VecF b) { return {_mm512_min_ps(a.v, b.v)}; }
inline float hmax(VecF a) { return _mm512_reduce_max_ps(a.v); }
// max that propagates NaN: a NaN lane of either operand gives NaN (a + b) there.
inline VecF vmax_nan(VecF a, VecF b) {
  return {_mm512_mask_add_ps(_mm512_max_ps(a.v, b.v), _mm512_cmp_ps_mask(a.v, b.v, _CMP_UNORD_Q), a.v, b.v)};
}
inline float hsum(VecF a) { return _mm512_reduce_add_ps(a.v); }

// exp(x): n = round(x·log2 e), Cody-Waite reduction r = x - n·ln2 (two constants, exact for the
// |x| < 128 softmax uses), degree-6 polynomial for e^r on [-ln2/2, ln2/2] (Cephes coefficients),
// then vscalefps multiplies by 2^n with the hardware's own overflow handling. ~2 ulp. Below -86.5
// (e^x < 2^-124.8) the result is exactly 0, through a zero-masked scalef: the lanes are never
// computed, so -inf scores cost no denormal microcode assist (a ~100-cycle stall per vector that
// an unmasked underflow would take). NaN stays NaN.
inline VecF vexp(VecF x) {
  const __mmask16 keep = _mm512_cmp_ps_mask(x.v, _mm512_set1_ps(-86.5f), _CMP_NLT_UQ);
  const __m512 xc = _mm512_max_ps(_mm512_set1_ps(-86.5f), x.v);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return {_mm512_maskz_scalef_ps(keep, y, n)};
}

// 2^x, the softmax's exponential (the attention kernels keep scores in log2 units): n = round(x),
// a minimax polynomial for 2^f on f = x - n in [-1/2, 1/2], and vscalefps for 2^n (the hardware's
// own overflow). Deg 5: 2.3e-7 relative error (fp32 results); Deg 3: 7.5e-5 (bf16 results, whose
// rounding is 4e-3). Below -125 the result is exactly 0 through a zero-masked scalef (no denormal
// assist for -inf scores, see vexp); NaN stays NaN.
template <int Deg>
inline VecF vexp2(VecF x) {
  static_assert(Deg == 3 || Deg == 5, "vexp2: degree 3 or 5");
  const __mmask16 keep = _mm512_cmp_ps_mask(x.v, _mm512_set1_ps(-125.0f), _CMP_NLT_UQ);
  const __m512 xc = _mm512_max_ps(_mm512_set1_ps(-125.0f), x.v);
  const __m512 n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(xc, n);
  const float* c = Deg == 3 ? kExp2Deg3 : kExp2Deg5;
  __m512 p = _mm512_set1_ps(c[0]);
  for (int i = 1; i <= Deg; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c[i]));  // Horner, unrolled by the compiler
  return {_mm512_maskz_scalef_ps(keep, p, n)};
}

// bf16 <-> float, 16 lanes. The rounding is IEEE round-to-nearest-even: vcvtneps2bf16 where the
// translation unit has AVX512-BF16 (ARMOUR_AVX512BF16, isa_avx512bf16.cpp), else on the integer
// bits, a NaN keeping a quiet NaN (its low mantissa bits would otherwise round it to inf).
inline VecF load_bf16(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
}
inline __m256i bf16_bits(VecF x) {
#ifdef ARMOUR_AVX512BF16
  return (__m256i)_mm512_cvtneps_pbh(x.v);
#endif
  const __m512i u = _mm512_castps_si512(x.v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);
}
inline void store_bf16(uint16_t* p, VecF x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bf16_bits(x)); }
inline void store_bf16_n(uint16_t* p, VecF x, int64_t n) {
  _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1u), bf16_bits(x));
}

// Gathers of one element from each of W rows `stride` elements apart (operand packing); the
// 32-bit lane indices must not overflow: gather_ok(stride).
inline bool gather_ok(int64_t stride) { return stride >= 0 && stride < (int64_t{1} << 31) / 16; }
inline __m512i gather_index(int64_t stride) {
  return _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                            _mm512_set1_epi32(static_cast<int32_t>(stride)));
}
inline VecF gather_f32(const float* p, int64_t stride) { return {_mm512_i32gather_ps(gather_index(stride), p, 4)}; }
// The bf16 pair (p[k·stride], p[k·stride + 1]) of each row k, as two float vectors.
inline void gather_bf16_pairs(const uint16_t* p, int64_t stride, VecF& even, VecF& odd) {
  const __m512i w = _mm512_i32gather_epi32(gather_index(stride), p, 2);
  even = {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
  odd = {_mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u))))};
}

// 16×16 transpose of 32-bit words: out[k] lane r = word k of row r, for rows r < rows (the others
// read as 0) and words k < cols (out[k] for k ≥ cols is 0); row r starts at p + r · row_bytes. The
// operand packing's transposes (Kᵀ, Vᵀ, Qᵀ, dOᵀ; dKᵀ, dVᵀ back to rows): 64 shuffles and 16 loads
// per block, where 16 gathers would cost a 16-row gather each.
inline void transpose16_words(const void* p, int64_t row_bytes, int64_t rows, int64_t cols, __m512i out[16]) {
  const __mmask16 m = cols >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << cols) - 1u);
  __m512i r[16], t[16];
  for (int i = 0; i < 16; ++i)
    r[i] = i < rows ? _mm512_maskz_loadu_epi32(m, static_cast<const char*>(p) + i * row_bytes) : _mm512_setzero_si512();
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + k], 128-bit lane L: rows 4i..4i+3 of word 4L + k
    r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int k = 0; k < 4; ++k) {  // word 4L + k: lane L of r[k], r[4 + k], r[8 + k], r[12 + k]
    const __m512i x0 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0x44), x1 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0xee);
    const __m512i y0 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0x44), y1 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0xee);
    out[k] = _mm512_shuffle_i32x4(x0, y0, 0x88);
    out[4 + k] = _mm512_shuffle_i32x4(x0, y0, 0xdd);
    out[8 + k] = _mm512_shuffle_i32x4(x1, y1, 0x88);
    out[12 + k] = _mm512_shuffle_i32x4(x1, y1, 0xdd);
  }
}
inline VecF words_as_f32(__m512i w) { return {_mm512_castsi512_ps(w)}; }
// The two bf16 of each 32-bit word as floats: the low (even index) and high (odd index) halves.
inline VecF words_lo_bf16(__m512i w) { return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))}; }
inline VecF words_hi_bf16(__m512i w) {
  return {_mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u))))};
}
