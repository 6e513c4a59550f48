// One-lane "vectors" (plain scalars): the baseline x86-64 path and every float64 kernel.
// Included inside an ISA namespace by isa_*.cpp; needs <cmath> and <cstring>, included there.
#pragma once

template <class T>
struct Scalar1 {
  using S = T;
  static constexpr int W = 1;
  static constexpr int MR = 4, NV = 2;  // GEMM register block: rows x vectors
  T v;
  static inline Scalar1 load(const T* p) { return {*p}; }
  static inline Scalar1 load_n(const T* p, int64_t n) { return {n > 0 ? *p : T(0)}; }
  static inline Scalar1 set1(T x) { return {x}; }
  static inline Scalar1 zero() { return {T(0)}; }
  inline void store(T* p) const { *p = v; }
  inline void store_n(T* p, int64_t n) const { if (n > 0) *p = v; }
};

template <class T> inline Scalar1<T> operator+(Scalar1<T> a, Scalar1<T> b) { return {a.v + b.v}; }
template <class T> inline Scalar1<T> operator-(Scalar1<T> a, Scalar1<T> b) { return {a.v - b.v}; }
template <class T> inline Scalar1<T> operator*(Scalar1<T> a, Scalar1<T> b) { return {a.v * b.v}; }
template <class T> inline Scalar1<T> operator/(Scalar1<T> a, Scalar1<T> b) { return {a.v / b.v}; }
template <class T> inline Scalar1<T> vrcp(Scalar1<T> d) { return {T(1) / d.v}; }
template <class T> inline Scalar1<T> fmadd(Scalar1<T> a, Scalar1<T> b, Scalar1<T> c) { return {a.v * b.v + c.v}; }
template <class T> inline Scalar1<T> vmax(Scalar1<T> a, Scalar1<T> b) { return {a.v > b.v ? a.v : b.v}; }
template <class T> inline Scalar1<T> vmin(Scalar1<T> a, Scalar1<T> b) { return {a.v < b.v ? a.v : b.v}; }
// max that propagates NaN (vec_avx2.h, vec_avx512.h): NaN when either operand is NaN.
template <class T> inline Scalar1<T> vmax_nan(Scalar1<T> a, Scalar1<T> b) {
  return {a.v != a.v || b.v != b.v ? a.v + b.v : (a.v > b.v ? a.v : b.v)};
}
template <class T> inline T hmax(Scalar1<T> a) { return a.v; }
template <class T> inline T hsum(Scalar1<T> a) { return a.v; }
template <class T> inline Scalar1<T> vexp(Scalar1<T> a) { return {std::exp(a.v)}; }
template <int Deg, class T> inline Scalar1<T> vexp2(Scalar1<T> a) { return {std::exp2(a.v)}; }

using VecD = Scalar1<double>;

// Minimax polynomials for 2^f on f in [-1/2, 1/2] (relative error 7.5e-5 and 2.3e-7), highest
// degree first, for the vector exp2 of vec_avx2.h / vec_avx512.h.
constexpr float kExp2Deg3[4] = {0.05517083778977394f, 0.24260935187339783f, 0.6932609677314758f, 0.9999281764030457f};
constexpr float kExp2Deg5[6] = {0.001327640376985073f, 0.0096755251288414f, 0.05550713464617729f,
                                0.24022120237350464f, 0.6931469440460205f, 1.0000001192092896f};

// bf16 <-> float one element at a time: round to nearest even, a NaN stays a quiet NaN.
inline float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

