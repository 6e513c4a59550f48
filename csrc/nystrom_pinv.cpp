// Razavi's iterative pseudo-inverse and its backward, batched over B·H (see nystrom_pinv.h).
//
// One iteration, written as the products it is made of (each one at::baddbmm):
//   AZ = A Z,  U1 = 7 AZ − AZ AZ,  U2 = 15 AZ − AZ U1,  Z' = 13/4 Z − 1/4 Z U2.
// Backward of one iteration, given G = dZ':
//   dZ = 13/4 G − 1/4 G U2ᵀ,  dU2 = −1/4 Zᵀ G,
//   dAZ = 15 dU2 − dU2 U1ᵀ,   dU1 = −AZᵀ dU2,   dAZ += 7 dU1 − dU1 AZᵀ − AZᵀ dU1,
//   dA += dAZ Zᵀ,  dZ += Aᵀ dAZ.
// Then Z₀ = Aᵀ / c: dA += dZ₀ᵀ / c and dc = −Σ dZ₀∘Z₀ / c, c = r·s with r, s the maxima of the
// row and column abs-sums; each maximum's gradient goes to the rows / columns equal to it.
#include "nystrom_pinv.h"

#include <ATen/ATen.h>

namespace armour {
namespace linear {

at::Tensor razavi_pinv(const at::Tensor& a, int64_t iterations, bool seed, PinvTrace* trace) {
  const at::Tensor abs = a.abs();
  const at::Tensor rows = abs.sum(-1), cols = abs.sum(-2);  // (B·H, m)
  const at::Tensor denom = seed ? (rows.max() * cols.max()).reshape({1, 1, 1})
                                : (rows.amax(-1) * cols.amax(-1)).reshape({a.size(0), 1, 1});
  at::Tensor z = (a.transpose(1, 2) / denom).contiguous();
  if (trace) {
    trace->z0 = z;
    trace->denom = denom;
    trace->rows = rows;
    trace->cols = cols;
  }
  for (int64_t it = 0; it < iterations; ++it) {
    at::Tensor az = at::bmm(a, z);
    at::Tensor u1 = at::baddbmm(az, az, az, 7.0, -1.0);
    at::Tensor u2 = at::baddbmm(az, az, u1, 15.0, -1.0);
    at::Tensor next = at::baddbmm(z, z, u2, 3.25, -0.25);
    if (trace) {
      trace->z.push_back(z);
      trace->az.push_back(az);
      trace->u1.push_back(u1);
      trace->u2.push_back(u2);
    }
    z = next;
  }
  return z;
}

namespace {

// Gradient of max(x) over the last dim (per row of x, clean) or over all of x (seed), given the
// gradient `g` of each maximum: g / count at the elements equal to their maximum, 0 elsewhere.
at::Tensor max_grad(const at::Tensor& x, const at::Tensor& g, bool seed) {
  const at::Tensor top = seed ? x.max() : x.amax(-1, /*keepdim=*/true);
  at::Tensor hit = (x == top).to(x.scalar_type());
  const at::Tensor count = seed ? hit.sum() : hit.sum(-1, /*keepdim=*/true);
  return hit * (seed ? g : g.reshape({-1, 1})) / count;
}

}  // namespace

at::Tensor razavi_pinv_backward(const at::Tensor& a, const PinvTrace& tr, bool seed, const at::Tensor& dz) {
  const at::Tensor at_ = a.transpose(1, 2);
  at::Tensor g = dz;
  at::Tensor da = at::zeros_like(a);
  for (int64_t it = static_cast<int64_t>(tr.z.size()) - 1; it >= 0; --it) {
    const at::Tensor zt = tr.z[it].transpose(1, 2), azt = tr.az[it].transpose(1, 2);
    at::Tensor dz_prev = at::baddbmm(g, g, tr.u2[it].transpose(1, 2), 3.25, -0.25);
    const at::Tensor du2 = at::bmm(zt, g).mul_(-0.25);
    at::Tensor daz = at::baddbmm(du2, du2, tr.u1[it].transpose(1, 2), 15.0, -1.0);
    const at::Tensor du1 = at::bmm(azt, du2).neg_();
    daz.add_(at::baddbmm(du1, du1, azt, 7.0, -1.0)).baddbmm_(azt, du1, 1.0, -1.0);
    da.baddbmm_(daz, zt);
    dz_prev.baddbmm_(at_, daz);
    g = dz_prev;
  }
  // Z₀ = aᵀ / c
  da.add_(g.transpose(1, 2) / tr.denom);
  at::Tensor dc = -(g * tr.z0).sum(at::IntArrayRef{1, 2}) / tr.denom.reshape({-1});  // (B·H) or (1) in seed mode
  if (seed) dc = dc.sum();
  const at::Tensor r = seed ? tr.rows.max() : tr.rows.amax(-1), s = seed ? tr.cols.max() : tr.cols.amax(-1);
  const at::Tensor drows = max_grad(tr.rows, dc * s, seed), dcols = max_grad(tr.cols, dc * r, seed);
  da.add_(a.sign() * (drows.unsqueeze(-1) + dcols.unsqueeze(-2)));
  return da;
}

}  // namespace linear
}  // namespace armour
