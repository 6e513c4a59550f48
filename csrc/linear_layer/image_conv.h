// A network's first convolution read straight from the NCHW image, channels-last out (inference
// only; kernels/image_conv.h, docs/image_conv.md).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace armour {

// act(conv2d(x, weight, bias, stride, padding)): x (B, C, H, W) float32 / bfloat16, any strides;
// weight (Cout, C, KH, KW) and bias (Cout,) in x's dtype; square stride and padding. The result is
// (B, Cout, Ho, Wo) in x's dtype, channels-last in memory. act: the kernels' Act code.
at::Tensor image_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      int64_t stride, int64_t padding, int64_t act);

}  // namespace armour
