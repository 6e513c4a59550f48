// The dense layer's epilogue on one tile (DenseTile, kernel_api.h): y = act(acc + bias) + residual,
// applied while the GEMM's tile is still in cache, converted to the output dtype on the way out.
//
// The activations follow PyTorch's formulas, NaN in giving NaN out (the max / min operand order
// below keeps a NaN: vmax(a, b) returns b when either is NaN), ±inf as torch's vectorised CPU
// kernels give it. GELU's erf is Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7, below
// fp32's rounding of the result), tanh and the sigmoid go through vexp.
//
// Included inside namespace armour::<isa> by isa_<isa>.cpp after the ISA's vector headers.
#pragma once

#include "kernels/attention_common.h"  // load_as / store_as

namespace dense_detail {

inline VecF vload(const float* p) { return VecF::load(p); }
inline VecF vload(const bf16_t* p) { return load_bf16(&p->bits); }
inline void vstore(float* p, VecF v) { v.store(p); }
inline void vstore(bf16_t* p, VecF v) { store_bf16(&p->bits, v); }

template <class V>
inline V activate(V x, Act act) {
  using S = typename V::S;
  switch (act) {
    case Act::hardswish: {  // x · min(max(x + 3, 0), 6) / 6
      const V t = vmin(V::set1(S(6)), vmax(V::zero(), x + V::set1(S(3))));
      return x * t * V::set1(S(1) / S(6));
    }
    case Act::relu: return vmax(V::zero(), x);
    case Act::silu: return x / (V::set1(S(1)) + vexp(V::zero() - x));
    case Act::gelu_tanh: {  // x/2 · (1 + tanh(u)), 1 + tanh(u) = 2 − 2 / (e^{2u} + 1)
      const V u = V::set1(S(0.7978845608028654)) * (x + V::set1(S(0.044715)) * x * x * x);
      const V e = vexp(u + u);
      return x * (V::set1(S(1)) - V::set1(S(1)) / (e + V::set1(S(1))));
    }
    case Act::gelu: {  // x · Φ(x), Φ(x) = (1 + erf(x/√2)) / 2
      const V z = x * V::set1(S(0.7071067811865476));
      const V az = vmax(z, V::zero() - z);
      const V t = vrcp(V::set1(S(1)) + V::set1(S(0.3275911)) * az);  // ≥ 1: the fast reciprocal is exact enough
      V p = V::set1(S(1.061405429));
      p = fmadd(p, t, V::set1(S(-1.453152027)));
      p = fmadd(p, t, V::set1(S(1.421413741)));
      p = fmadd(p, t, V::set1(S(-0.284496736)));
      p = fmadd(p, t, V::set1(S(0.254829592)));
      const V erf_abs = V::set1(S(1)) - p * t * vexp(V::zero() - az * az);
      // sign(z) without a select: ±1 wherever |z| > 1e-30 (below that erf(z) ≈ 0 either way); NaN stays NaN
      const V sign = vmin(V::set1(S(1)), vmax(V::set1(S(-1)), z * V::set1(S(1e30))));
      return x * V::set1(S(0.5)) * (V::set1(S(1)) + sign * erf_abs);
    }
    default: return x;
  }
}

template <class Acc, class T>
void tile(const DenseTile& t) {
  const Acc* acc = static_cast<const Acc*>(t.acc);
  T* y = static_cast<T*>(t.y);
  const T* bias = static_cast<const T*>(t.bias);
  const T* res = static_cast<const T*>(t.residual);
  constexpr int W = VecF::W;
  for (int64_t r = 0; r < t.rows; ++r) {
    const Acc* a = acc + r * t.ld_acc;
    T* yr = y + r * t.ld_y;
    const T* rr = res ? res + r * t.ld_residual : nullptr;
    int64_t c = 0;
    for (; c + W <= t.cols; c += W) {
      VecF v = vload(a + c);
      if (bias) v = v + vload(bias + c);
      v = activate(v, t.act);
      if (rr) v = v + vload(rr + c);
      vstore(yr + c, v);
    }
    for (; c < t.cols; ++c) {  // the tail, one lane at a time through the same formulas
      Scalar1<float> v{load_as<float>(a + c)};
      if (bias) v.v += load_as<float>(bias + c);
      v = activate(v, t.act);
      if (rr) v.v += load_as<float>(rr + c);
      store_as(yr + c, v.v);
    }
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
