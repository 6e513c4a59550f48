// The m×m part of Nyström attention (docs/nystrom.md): Z = pinv(A2) by Razavi's iterations and
// its hand-derived backward, as ATen ops batched over B·H (m = 64 in the paper: at::bmm on
// (B·H, m, m) runs oneDNN / MKL GEMMs as fast as anything hand-written here).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace armour {
namespace linear {

// What the backward needs from the forward iterations: each iteration's input Z and its
// products AZ, U1 = AZ(7I − AZ), U2 = AZ(15I − U1); Z₀ and the scaling's parts.
struct PinvTrace {
  std::vector<at::Tensor> z, az, u1, u2;
  at::Tensor z0, denom, rows, cols;
};

// a (B·H, m, m) float32. Z₀ = aᵀ / (max row-abs-sum · max column-abs-sum), per matrix ("clean")
// or over the whole batch ("seed"); then Z ← ¼ Z (13I − AZ(15I − AZ(7I − AZ))), `iterations`
// times. With `trace`, records what razavi_pinv_backward needs.
at::Tensor razavi_pinv(const at::Tensor& a, int64_t iterations, bool seed, PinvTrace* trace);

// dA from dZ through the iterations, Z₀ = aᵀ / denom and the maxima in denom (routed evenly to
// ties, as torch's amax / max backward do).
at::Tensor razavi_pinv_backward(const at::Tensor& a, const PinvTrace& trace, bool seed, const at::Tensor& dz);

}  // namespace linear
}  // namespace armour
