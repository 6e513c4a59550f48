// LayerNorm over the rows of a matrix (RowNorm, kernel_api.h): the dense layer's input prologue.
//
//   y = (x − mean) · rsqrt(var + eps) · weight + bias,  var the biased variance over the row
//
// Statistics in fp32 by two passes over the row (it is in L1: a row is at most a few KB), the
// result rounded once to the output dtype, as ATen's LayerNorm rounds its bf16 output. A NaN or
// an infinity in a row makes the whole row NaN (the mean or the variance is NaN), as in PyTorch.
//
// Included inside namespace armour::<isa> by isa_<isa>.cpp after the ISA's vector headers.
#pragma once

#include "kernels/dense_epilogue.h"  // vload / vstore; load_as / store_as

namespace layer_norm_detail {

using dense_detail::vload;
using dense_detail::vstore;

template <class T, bool HasWeight, bool HasBias>
void rows(const RowNorm& a) {
  constexpr int W = VecF::W;
  const int64_t K = a.cols;
  const T* gamma = static_cast<const T*>(a.weight);
  const T* beta = static_cast<const T*>(a.bias);
  for (int64_t r = 0; r < a.rows; ++r) {
    const T* x = static_cast<const T*>(a.x) + r * a.ld_x;
    T* y = static_cast<T*>(a.y) + r * a.ld_y;
    VecF s = VecF::zero();
    int64_t c = 0;
    for (; c + W <= K; c += W) s = s + vload(x + c);
    float sum = hsum(s);
    for (; c < K; ++c) sum += load_as<float>(x + c);
    const float mean = sum / static_cast<float>(K);
    const VecF m = VecF::set1(mean);
    VecF q = VecF::zero();
    for (c = 0; c + W <= K; c += W) {
      const VecF d = vload(x + c) - m;
      q = fmadd(d, d, q);
    }
    float sq = hsum(q);
    for (; c < K; ++c) {
      const float d = load_as<float>(x + c) - mean;
      sq += d * d;
    }
    const float rstd = 1.0f / std::sqrt(sq / static_cast<float>(K) + a.eps);
    const VecF rs = VecF::set1(rstd);
    for (c = 0; c + W <= K; c += W) {
      VecF v = (vload(x + c) - m) * rs;
      if constexpr (HasWeight) v = v * vload(gamma + c);
      if constexpr (HasBias) v = v + vload(beta + c);
      vstore(y + c, v);
    }
    for (; c < K; ++c) {
      float v = (load_as<float>(x + c) - mean) * rstd;
      if constexpr (HasWeight) v *= load_as<float>(gamma + c);
      if constexpr (HasBias) v += load_as<float>(beta + c);
      store_as(y + c, v);
    }
  }
}

template <class T>
void rows_typed(const RowNorm& a) {
  if (a.weight) return a.bias ? rows<T, true, true>(a) : rows<T, true, false>(a);
  return a.bias ? rows<T, false, true>(a) : rows<T, false, false>(a);
}

}  // namespace layer_norm_detail

// fp32 and bf16 (the dense layer's engines); a float64 call is the torch side's (at::layer_norm).
inline void layer_norm_rows(const RowNorm& a) {
  using namespace layer_norm_detail;
  if (a.dtype == DType::bf16) return rows_typed<bf16_t>(a);
  return rows_typed<float>(a);
}
