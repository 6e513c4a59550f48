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

// Mean and 1 / sqrt(var + eps) of one row of K values.
template <class T>
inline void row_stats(const T* x, int64_t K, float eps, float& mean_out, float& rstd_out) {
  constexpr int W = VecF::W;
  // Four partial sums per pass: a row is a dozen vectors, and one accumulator would make each pass
  // one serial chain of adds.
  VecF s0 = VecF::zero(), s1 = VecF::zero(), s2 = VecF::zero(), s3 = VecF::zero();
  int64_t c = 0;
  for (; c + 4 * W <= K; c += 4 * W) {
    s0 = s0 + vload(x + c);
    s1 = s1 + vload(x + c + W);
    s2 = s2 + vload(x + c + 2 * W);
    s3 = s3 + vload(x + c + 3 * W);
  }
  for (; c + W <= K; c += W) s0 = s0 + vload(x + c);
  float sum = hsum((s0 + s1) + (s2 + s3));
  for (; c < K; ++c) sum += load_as<float>(x + c);
  const float mean = sum / static_cast<float>(K);
  const VecF m = VecF::set1(mean);
  VecF q0 = VecF::zero(), q1 = VecF::zero(), q2 = VecF::zero(), q3 = VecF::zero();
  for (c = 0; c + 4 * W <= K; c += 4 * W) {
    const VecF d0 = vload(x + c) - m, d1 = vload(x + c + W) - m;
    const VecF d2 = vload(x + c + 2 * W) - m, d3 = vload(x + c + 3 * W) - m;
    q0 = fmadd(d0, d0, q0);
    q1 = fmadd(d1, d1, q1);
    q2 = fmadd(d2, d2, q2);
    q3 = fmadd(d3, d3, q3);
  }
  for (; c + W <= K; c += W) {
    const VecF d = vload(x + c) - m;
    q0 = fmadd(d, d, q0);
  }
  float sq = hsum((q0 + q1) + (q2 + q3));
  for (; c < K; ++c) {
    const float d = load_as<float>(x + c) - mean;
    sq += d * d;
  }
  mean_out = mean;
  rstd_out = 1.0f / std::sqrt(sq / static_cast<float>(K) + eps);
}

template <class T, bool HasWeight, bool HasBias>
void rows(const RowNorm& a) {
  constexpr int W = VecF::W;
  constexpr int64_t kRows = 16;  // statistics of a group of rows first: their chains overlap
  const int64_t K = a.cols;
  const T* gamma = static_cast<const T*>(a.weight);
  const T* beta = static_cast<const T*>(a.bias);
  float mean[kRows], rstd[kRows];
  for (int64_t r0 = 0; r0 < a.rows; r0 += kRows) {
    const int64_t nr = a.rows - r0 < kRows ? a.rows - r0 : kRows;
    for (int64_t i = 0; i < nr; ++i)
      row_stats(static_cast<const T*>(a.x) + (r0 + i) * a.ld_x, K, a.eps, mean[i], rstd[i]);
    for (int64_t i = 0; i < nr; ++i) {
      const T* x = static_cast<const T*>(a.x) + (r0 + i) * a.ld_x;
      T* y = static_cast<T*>(a.y) + (r0 + i) * a.ld_y;
      const VecF m = VecF::set1(mean[i]), rs = VecF::set1(rstd[i]);
      int64_t c = 0;
      for (; c + W <= K; c += W) {
        VecF v = (vload(x + c) - m) * rs;
        if constexpr (HasWeight) v = v * vload(gamma + c);
        if constexpr (HasBias) v = v + vload(beta + c);
        vstore(y + c, v);
      }
      for (; c < K; ++c) {
        float v = (load_as<float>(x + c) - mean[i]) * rstd[i];
        if constexpr (HasWeight) v *= load_as<float>(gamma + c);
        if constexpr (HasBias) v += load_as<float>(beta + c);
        store_as(y + c, v);
      }
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
