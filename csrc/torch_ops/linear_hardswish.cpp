// armour_kernels::linear_hardswish behind the dispatcher: the CPU kernel (linear_layer/linear_hardswish.cpp's GEMM + fused
// bias and Hardswish) and, for every device, the autograd. The CUDA kernel is the Triton launcher,
// registered from Python (armour_kernels/ops/linear_act.py).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "linear_layer/linear_hardswish.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor linear_hardswish_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  if (x.scalar_type() == at::kHalf) {  // computed in float32 (no fp16 engine on the CPUs served on), rounded once
    std::optional<at::Tensor> b32;
    if (bias.has_value() && bias->defined()) b32 = bias->to(at::kFloat);
    return armour::linear_hardswish(x.to(at::kFloat), weight.to(at::kFloat), b32, "auto").to(at::kHalf);
  }
  return armour::linear_hardswish(x, weight, bias, "auto");
}

const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>&
linear_hardswish_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("armour_kernels::linear_hardswish", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>();
  return op;
}

class LinearHardswishFunction : public torch::autograd::Function<LinearHardswishFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias) {
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      y = linear_hardswish_op().call(x, weight, bias);
    }
    ctx->save_for_backward({x, weight, bias.value_or(at::Tensor())});
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    // The pre-activation, recomputed: the fused forward never stores it.
    const at::Tensor z = at::linear(x, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt);
    const at::Tensor dz = at::hardswish_backward(grads[0], z);
    const at::Tensor dz2 = dz.reshape({-1, dz.size(-1)});
    at::Tensor dx, dw, db;
    if (ctx->needs_input_grad(0)) dx = at::matmul(dz, weight);
    if (ctx->needs_input_grad(1)) dw = dz2.t().mm(x.reshape({-1, x.size(-1)}));
    if (bias.defined() && ctx->needs_input_grad(2)) db = dz2.sum(0);
    return {dx, dw, db};
  }
};

at::Tensor linear_hardswish_autograd(const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias) {
  const bool bias_grad = bias.has_value() && bias->defined() && bias->requires_grad();
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || weight.requires_grad() || bias_grad)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // inference: no autograd node
    return linear_hardswish_op().call(x, weight, bias);
  }
  return LinearHardswishFunction::apply(x, weight, bias)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(armour_kernels, CPU, m) { m.impl("linear_hardswish", TORCH_FN(linear_hardswish_cpu)); }

TORCH_LIBRARY_IMPL(armour_kernels, Autograd, m) { m.impl("linear_hardswish", TORCH_FN(linear_hardswish_autograd)); }
