// The dense layer's epilogue on one tile (DenseTile, kernel_api.h): y = act(acc + bias) + residual,
// applied while the GEMM's tile is still in cache, converted to the output dtype on the way out.
//
// The activations follow PyTorch's formulas, NaN in giving NaN out (the max / min operand order
// below keeps a NaN: vmax(a, b) returns b when either is NaN), ±inf as torch's vectorised CPU
// kernels give it (GELU(+inf) = +inf, PyTorch's float64 result). GELU's erf is a rational fit (see
// activate), tanh and the sigmoid go through vexp.
//
// Included inside namespace armour::<isa> by isa_<isa>.cpp after the ISA's vector headers.
#pragma once

#include "kernels/attention_common.h"  // load_as / store_as

namespace dense_detail {

inline VecF vload(const float* p) { return VecF::load(p); }
inline VecF vload(const bf16_t* p) { return load_bf16(&p->bits); }
inline void vstore(float* p, VecF v) { v.store(p); }
inline void vstore(bf16_t* p, VecF v) { store_bf16(&p->bits, v); }

// The activation A, fixed at compile time (the tile loops below are instantiated per activation, so
// no branch on it runs per vector).
template <Act A, class V>
inline V activate(V x) {
  using S = typename V::S;
  if constexpr (A == Act::hardswish) {  // x · min(max(x + 3, 0), 6) / 6
    const V t = vmin(V::set1(S(6)), vmax(V::zero(), x + V::set1(S(3))));
    return x * t * V::set1(S(1) / S(6));
  } else if constexpr (A == Act::relu) {
    return vmax(V::zero(), x);
  } else if constexpr (A == Act::silu) {
    return x / (V::set1(S(1)) + vexp(V::zero() - x));
  } else if constexpr (A == Act::gelu_tanh) {  // x/2 · (1 + tanh(u)), 1 + tanh(u) = 2 − 2 / (e^{2u} + 1)
    const V u = V::set1(S(0.7978845608028654)) * (x + V::set1(S(0.044715)) * x * x * x);
    const V e = vexp(u + u);
    return x * (V::set1(S(1)) - V::set1(S(1)) / (e + V::set1(S(1))));
  } else if constexpr (A == Act::gelu) {  // x · Φ(x), Φ(x) = (1 + erf(x/√2)) / 2
    // erf(z) as z·P(z²) / Q(z²) on z clamped to [-4, 4] (erf(±4) is ±1 in fp32): a rational minimax
    // fit (the coefficients of Eigen's float erf), a few ulp, FMAs only — the exp-based formula it
    // replaces cost ~3x more per vector, and at DeiT's MLP shapes on AMX the GELU was most of the
    // layer's time. NaN stays NaN through the clamp (data second).
    const V z = vmax(V::set1(S(-4)), vmin(V::set1(S(4)), x * V::set1(S(0.7071067811865476))));
    const V z2 = z * z;
    V p = fmadd(z2, V::set1(S(-2.72614225801306e-10)), V::set1(S(2.77068142495902e-08)));
    p = fmadd(z2, p, V::set1(S(-2.10102402082508e-06)));
    p = fmadd(z2, p, V::set1(S(-5.69250639462346e-05)));
    p = fmadd(z2, p, V::set1(S(-7.34990630326855e-04)));
    p = fmadd(z2, p, V::set1(S(-2.95459980854025e-03)));
    p = fmadd(z2, p, V::set1(S(-1.60960333262415e-02)));
    V q = fmadd(z2, V::set1(S(-1.45660718464996e-05)), V::set1(S(-2.13374055278905e-04)));
    q = fmadd(z2, q, V::set1(S(-1.68282697438203e-03)));
    q = fmadd(z2, q, V::set1(S(-7.37332916720468e-03)));
    q = fmadd(z2, q, V::set1(S(-1.42647390514189e-02)));
    // q ≤ -0.0142 on the clamped range: the fast reciprocal is exact enough. The 1 + 2^-23 scale and
    // the clamp snap |erf| ≥ 1 - 2^-24 (within an ulp of 1: |z| ≳ 3.9) to exactly ±1, so GELU(x < -5.6)
    // is exactly -0 and GELU(-inf) NaN, as in PyTorch (-inf · 0), instead of x times a residue.
    const V erf = vmax(V::set1(S(-1)), vmin(V::set1(S(1)), z * p * vrcp(q) * V::set1(S(1.00000011920928955))));
    return x * V::set1(S(0.5)) * (V::set1(S(1)) + erf);
  } else {
    return x;
  }
}

// One tile with the activation and the presence of bias / residual fixed: the loop the compiler
// keeps branch-free (the runtime switch per vector cost more than the arithmetic in bf16 at
// LeViT's batch-1 shapes, where the AMX GEMM itself is short).
template <class Acc, class T, Act A, bool HasBias, bool HasResidual>
void tile_fixed(const DenseTile& t) {
  const Acc* acc = static_cast<const Acc*>(t.acc);
  T* y = static_cast<T*>(t.y);
  const T* bias = static_cast<const T*>(t.bias);
  const T* res = static_cast<const T*>(t.residual);
  constexpr int W = VecF::W;
  for (int64_t r = 0; r < t.rows; ++r) {
    const Acc* a = acc + r * t.ld_acc;
    T* yr = y + r * t.ld_y;
    const T* rr = HasResidual ? res + r * t.ld_residual : nullptr;
    int64_t c = 0;
    for (; c + W <= t.cols; c += W) {
      VecF v = vload(a + c);
      if constexpr (HasBias) v = v + vload(bias + c);
      v = activate<A>(v);
      if constexpr (HasResidual) v = v + vload(rr + c);
      vstore(yr + c, v);
    }
    for (; c < t.cols; ++c) {  // the tail, one lane at a time through the same formulas
      Scalar1<float> v{load_as<float>(a + c)};
      if constexpr (HasBias) v.v += load_as<float>(bias + c);
      v = activate<A>(v);
      if constexpr (HasResidual) v.v += load_as<float>(rr + c);
      store_as(yr + c, v.v);
    }
  }
}

template <class Acc, class T, Act A>
void tile_act(const DenseTile& t) {
  if (t.bias) return t.residual ? tile_fixed<Acc, T, A, true, true>(t) : tile_fixed<Acc, T, A, true, false>(t);
  return t.residual ? tile_fixed<Acc, T, A, false, true>(t) : tile_fixed<Acc, T, A, false, false>(t);
}

template <class Acc, class T>
void tile(const DenseTile& t) {
  switch (t.act) {
    case Act::hardswish: return tile_act<Acc, T, Act::hardswish>(t);
    case Act::relu: return tile_act<Acc, T, Act::relu>(t);
    case Act::gelu: return tile_act<Acc, T, Act::gelu>(t);
    case Act::gelu_tanh: return tile_act<Acc, T, Act::gelu_tanh>(t);
    case Act::silu: return tile_act<Acc, T, Act::silu>(t);
    default: return tile_act<Acc, T, Act::none>(t);
  }
}

// float64: PyTorch's formulas in libm (the vector approximations above are fp32-accurate only).
inline double activate_exact(double x, Act act) {
  switch (act) {
    case Act::hardswish: return x * std::fmin(std::fmax(x + 3.0, 0.0), 6.0) / 6.0 + (x != x ? x : 0.0);
    case Act::relu: return x != x ? x : (x > 0.0 ? x : 0.0);
    case Act::silu: return x / (1.0 + std::exp(-x));
    case Act::gelu_tanh: return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    case Act::gelu: return 0.5 * x * (1.0 + std::erf(x * 0.7071067811865476));
    default: return x;
  }
}

// float64 (the plain path only, in place): one lane of doubles.
inline void tile_f64(const DenseTile& t) {
  const double* acc = static_cast<const double*>(t.acc);
  double* y = static_cast<double*>(t.y);
  const double* bias = static_cast<const double*>(t.bias);
  const double* res = static_cast<const double*>(t.residual);
  for (int64_t r = 0; r < t.rows; ++r)
    for (int64_t c = 0; c < t.cols; ++c) {
      double v = acc[r * t.ld_acc + c];
      if (bias) v += bias[c];
      v = activate_exact(v, t.act);
      if (res) v += res[r * t.ld_residual + c];
      y[r * t.ld_y + c] = v;
    }
}

}  // namespace dense_detail

inline void dense_epilogue(const DenseTile& t) {
  using namespace dense_detail;
  if (t.dtype == DType::f64) return tile_f64(t);
  const bool acc32 = t.acc_dtype == DType::f32;
  if (t.dtype == DType::bf16) return acc32 ? tile<float, bf16_t>(t) : tile<bf16_t, bf16_t>(t);
  return tile<float, float>(t);
}

// The output tile of a dense task (DenseTask, kernel_api.h) whose fp32 accumulators are at acc,
// ld_acc apart: columns [n0, n0 + width) of the task's rows, clipped to the layer's N.
inline DenseTile task_tile(const DenseTask& task, const float* acc, int64_t ld_acc, int64_t n0, int64_t width) {
  const size_t es = task.out.dtype == DType::bf16 ? 2 : 4;
  DenseTile t = task.out;
  t.acc_dtype = DType::f32;
  t.acc = acc;
  t.ld_acc = ld_acc;
  t.rows = task.rows;
  t.cols = task.N - n0 < width ? task.N - n0 : width;
  t.y = static_cast<char*>(task.out.y) + n0 * es;
  if (t.bias) t.bias = static_cast<const char*>(task.out.bias) + n0 * es;
  if (t.residual) t.residual = static_cast<const char*>(task.out.residual) + n0 * es;
  return t;
}
