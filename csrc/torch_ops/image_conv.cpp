// armour_kernels::image_conv behind the dispatcher: the CPU kernel (linear_layer/image_conv.cpp) and
// an autograd kernel that refuses a call needing a gradient (inference only; training runs
// F.conv2d) instead of silently returning a result with no graph.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "linear_layer/image_conv.h"

namespace {

using ImageConvFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
                               int64_t, int64_t);

at::Tensor image_conv_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               int64_t stride, int64_t padding, int64_t act) {
  const bool bias_grad = bias.has_value() && bias->defined() && bias->requires_grad();
  TORCH_CHECK(!at::GradMode::is_enabled() || !(x.requires_grad() || weight.requires_grad() || bias_grad),
              "armour_kernels::image_conv is inference-only (no gradient); train with F.conv2d");
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("armour_kernels::image_conv", "").typed<ImageConvFn>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(x, weight, bias, stride, padding, act);
}

}  // namespace

TORCH_LIBRARY_IMPL(armour_kernels, CPU, m) { m.impl("image_conv", TORCH_FN(armour::image_conv)); }

TORCH_LIBRARY_IMPL(armour_kernels, Autograd, m) { m.impl("image_conv", TORCH_FN(image_conv_autograd)); }
