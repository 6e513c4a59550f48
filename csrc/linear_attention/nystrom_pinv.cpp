// The scale of Nyström's first pinv iterate and its gradient, batched over B·H (see nystrom_pinv.h).
#include "linear_attention/nystrom_pinv.h"

#include <ATen/ATen.h>

namespace armour {
namespace linear {
namespace {

// Gradient of max(x) over the last dim (clean) or over all of x (seed) given the gradient `g` of
// each maximum: g / count at the elements equal to their maximum, 0 elsewhere.
at::Tensor max_grad(const at::Tensor& x, const at::Tensor& g, bool seed) {
  const at::Tensor top = seed ? x.max() : x.amax(-1, /*keepdim=*/true);
  const at::Tensor hit = (x == top).to(x.scalar_type());
  const at::Tensor count = seed ? hit.sum() : hit.sum(-1, /*keepdim=*/true);
  return hit * (seed ? g : g.unsqueeze(-1)) / count;
}

at::Tensor maximum(const at::Tensor& x, bool seed) { return seed ? x.max() : x.amax(-1); }

}  // namespace

PinvScale pinv_scale(const at::Tensor& a2, bool seed) {
  const at::Tensor abs = a2.abs();
  PinvScale s{abs.sum(-1), abs.sum(-2), {}};
  s.denom = (maximum(s.rows, seed) * maximum(s.cols, seed)).expand({a2.size(0)}).contiguous();
  return s;
}

at::Tensor pinv_scale_backward(const at::Tensor& a2, const PinvScale& s, const at::Tensor& dc, bool seed) {
  const at::Tensor g = seed ? dc.sum() : dc;  // seed: one c shared by the whole batch
  const at::Tensor drows = max_grad(s.rows, g * maximum(s.cols, seed), seed);
  const at::Tensor dcols = max_grad(s.cols, g * maximum(s.rows, seed), seed);
  return a2.sign() * (drows.unsqueeze(-1) + dcols.unsqueeze(-2));
}

}  // namespace linear
}  // namespace armour
