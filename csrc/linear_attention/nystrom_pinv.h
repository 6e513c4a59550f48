// Torch side of Nyström's pinv (docs/nystrom.md): the scale c of the first iterate Z₀ = A2ᵀ / c
// and the gradient that flows through it. The iterations themselves, forward and backward, run
// per (b, h) in kernels/nystrom_pinv_kernel.h.
#pragma once

#include <ATen/core/Tensor.h>

namespace armour {
namespace linear {

// c = (max row-abs-sum) · (max column-abs-sum) of A2: per matrix ("clean") or over the whole
// batch ("seed"); rows, cols (B·H, m) the abs-sums, denom (B·H) contiguous float32.
struct PinvScale {
  at::Tensor rows, cols, denom;
};

PinvScale pinv_scale(const at::Tensor& a2, bool seed);

// ∂L/∂A2 through c, given dc = ∂L/∂c per (b, h): each maximum's gradient goes evenly to the rows /
// columns equal to it (as torch's amax / max backward), then through |A2|.
at::Tensor pinv_scale_backward(const at::Tensor& a2, const PinvScale& scale, const at::Tensor& dc, bool seed);

}  // namespace linear
}  // namespace armour
