// armour_kernels::dense, ::dense_mlp and ::dense_pack behind the dispatcher: CPU kernels (linear_layer/dense.cpp),
// and an autograd kernel that refuses a call needing a gradient (the op is inference-only: training
// uses linear_act, whose paths have autograd) instead of silently returning a result with no graph.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "linear_layer/dense.h"

namespace {

using OptTensor = std::optional<at::Tensor>;
using DenseFn = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, int64_t, bool,
                           int64_t, const OptTensor&, const OptTensor&, std::optional<double>);

at::Tensor dense_autograd(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                          const OptTensor& residual, int64_t act, bool act_in, int64_t out_features,
                          const OptTensor& norm_weight, const OptTensor& norm_bias, std::optional<double> norm_eps) {
  const auto grad = [](const OptTensor& t) { return t.has_value() && t->defined() && t->requires_grad(); };
  TORCH_CHECK(!at::GradMode::is_enabled() || !(x.requires_grad() || weight.requires_grad() || grad(bias) ||
                                               grad(residual) || grad(norm_weight) || grad(norm_bias)),
              "armour_kernels::dense is inference-only (no gradient); use armour_kernels.ops.linear_act to train");
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("armour_kernels::dense", "").typed<DenseFn>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(x, weight, bias, residual, act, act_in, out_features, norm_weight, norm_bias, norm_eps);
}

using DenseMlpFn = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t, int64_t,
                              const at::Tensor&, const OptTensor&, int64_t, const OptTensor&, const OptTensor&,
                              const OptTensor&, std::optional<double>);

at::Tensor dense_mlp_autograd(const at::Tensor& x, const at::Tensor& weight1, const OptTensor& bias1, int64_t act,
                              int64_t hidden, const at::Tensor& weight2, const OptTensor& bias2, int64_t out_features,
                              const OptTensor& residual, const OptTensor& norm_weight, const OptTensor& norm_bias,
                              std::optional<double> norm_eps) {
  const auto grad = [](const OptTensor& t) { return t.has_value() && t->defined() && t->requires_grad(); };
  TORCH_CHECK(!at::GradMode::is_enabled() ||
                  !(x.requires_grad() || weight1.requires_grad() || weight2.requires_grad() || grad(bias1) ||
                    grad(bias2) || grad(residual) || grad(norm_weight) || grad(norm_bias)),
              "armour_kernels::dense_mlp is inference-only (no gradient); use armour_kernels.ops.linear_act.mlp to train");
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("armour_kernels::dense_mlp", "").typed<DenseMlpFn>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(x, weight1, bias1, act, hidden, weight2, bias2, out_features, residual, norm_weight, norm_bias,
                 norm_eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(armour_kernels, CPU, m) {
  m.impl("dense_mlp", TORCH_FN(armour::dense_mlp));
  m.impl("dense", TORCH_FN(armour::dense));  // the defaults are the schema's
  m.impl("dense_pack", TORCH_FN(armour::dense_pack));
}

TORCH_LIBRARY_IMPL(armour_kernels, Autograd, m) {
  m.impl("dense", TORCH_FN(dense_autograd));
  m.impl("dense_mlp", TORCH_FN(dense_mlp_autograd));
}
