// The baseline x86-64 path's "vectors": one float lane (Scalar1<float>, vec_scalar.h), with the
// same bf16 load / store interface as vec_avx2.h and vec_avx512.h. Included inside namespace
// armour::scalar by isa_scalar.cpp, after vec_scalar.h.
#pragma once

using VecF = Scalar1<float>;

inline VecF load_bf16(const uint16_t* p) { return {bf16_to_float(*p)}; }
inline void store_bf16(uint16_t* p, VecF x) { *p = float_to_bf16(x.v); }
inline void store_bf16_n(uint16_t* p, VecF x, int64_t n) { if (n > 0) *p = float_to_bf16(x.v); }

// The gathers of the vector headers, one row at a time (the callers' W > 1 branches skip them).
inline bool gather_ok(int64_t) { return false; }
inline VecF gather_f32(const float* p, int64_t) { return {*p}; }
inline void gather_bf16_pairs(const uint16_t* p, int64_t, VecF& even, VecF& odd) {
  even = {bf16_to_float(p[0])};
  odd = {bf16_to_float(p[1])};
}

// The AVX-512 transpose primitives (vec_avx512.h), declared for the generic code's W == 16 branches;
// never called on this path.
template <class X> void transpose16_words(const void* p, int64_t row_bytes, int64_t rows, int64_t cols, X* out);
template <class X> VecF words_as_f32(X w);
template <class X> VecF words_lo_bf16(X w);
template <class X> VecF words_hi_bf16(X w);
