// One-lane "vectors" (plain scalars): the baseline x86-64 path and every float64 kernel.
// Included inside an ISA namespace by isa_*.cpp; needs <cmath>, included there.
#pragma once

template <class T>
struct Scalar1 {
  using S = T;
  static constexpr int W = 1;
  static constexpr int MR = 4, NV = 2;  // GEMM register block: rows x vectors
  T v;
  static inline Scalar1 load(const T* p) { return {*p}; }
  static inline Scalar1 set1(T x) { return {x}; }
  static inline Scalar1 zero() { return {T(0)}; }
  inline void store(T* p) const { *p = v; }
};

template <class T> inline Scalar1<T> operator+(Scalar1<T> a, Scalar1<T> b) { return {a.v + b.v}; }
template <class T> inline Scalar1<T> operator-(Scalar1<T> a, Scalar1<T> b) { return {a.v - b.v}; }
template <class T> inline Scalar1<T> operator*(Scalar1<T> a, Scalar1<T> b) { return {a.v * b.v}; }
template <class T> inline Scalar1<T> fmadd(Scalar1<T> a, Scalar1<T> b, Scalar1<T> c) { return {a.v * b.v + c.v}; }
template <class T> inline Scalar1<T> vmax(Scalar1<T> a, Scalar1<T> b) { return {a.v > b.v ? a.v : b.v}; }
template <class T> inline Scalar1<T> vmin(Scalar1<T> a, Scalar1<T> b) { return {a.v < b.v ? a.v : b.v}; }
template <class T> inline T hmax(Scalar1<T> a) { return a.v; }
template <class T> inline T hsum(Scalar1<T> a) { return a.v; }
template <class T> inline Scalar1<T> vexp(Scalar1<T> a) { return {std::exp(a.v)}; }

using VecD = Scalar1<double>;
