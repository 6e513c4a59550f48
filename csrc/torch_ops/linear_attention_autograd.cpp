// Autograd of the Nyström and Performer ops, once for every device: the forward op runs below
// autograd and saves what the backward op needs; the backward calls that op through the
// dispatcher, so CPU tensors reach the C++ kernels and CUDA tensors the Triton launchers that
// armour_kernels/ops registers. The saved auxiliary outputs (landmarks, W, Y, lse3; ctx, ksum,
// stab) are non-differentiable. Each backward op has no derivative of its own: a second-order
// gradient through it is an error when it is taken, as torch's not-implemented fallback reports it.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "linear_attention/ops.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

std::optional<at::Tensor> maybe(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// The op's gradient for an input that was given, none for an absent one (the op's empty tensor).
at::Tensor grad_if(const at::Tensor& input, const at::Tensor& grad) { return input.defined() ? grad : at::Tensor(); }

class NystromFunction : public torch::autograd::Function<NystromFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& conv_weight,
                               int64_t num_landmarks, int64_t pinv_iterations, c10::string_view mode) {
    static const auto op = find_op<armour::NystromForward>("armour_kernels::nystrom_fwd");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, ql, kl, w, y, lse] = op.call(q, k, v, conv_weight, num_landmarks, pinv_iterations, mode);
    ctx->save_for_backward({q, k, v.value_or(at::Tensor()), conv_weight.value_or(at::Tensor()), ql, kl, w, y, lse});
    ctx->saved_data["num_landmarks"] = num_landmarks;
    ctx->saved_data["pinv_iterations"] = pinv_iterations;
    ctx->saved_data["mode"] = std::string(mode);
    ctx->mark_non_differentiable({ql, kl, w, y, lse});
    return {out, ql, kl, w, y, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<armour::NystromBackward>("armour_kernels::nystrom_bwd");
    const variable_list s = ctx->get_saved_variables();
    auto [dq, dk, dv, dconv] =
        op.call(grads[0], s[0], s[1], maybe(s[2]), maybe(s[3]), s[4], s[5], s[6], s[7], s[8],
                ctx->saved_data["num_landmarks"].toInt(), ctx->saved_data["pinv_iterations"].toInt(),
                ctx->saved_data["mode"].toStringRef());
    return {dq, dk, grad_if(s[2], dv), grad_if(s[3], dconv), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The projection is a fixed buffer: no gradient.
class PerformerFunction : public torch::autograd::Function<PerformerFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const std::optional<at::Tensor>& v, const at::Tensor& projection,
                               c10::string_view kernel, c10::string_view mode) {
    static const auto op = find_op<armour::PerformerForward>("armour_kernels::performer_fwd");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, context, ksum, stab] = op.call(q, k, v, projection, kernel, mode);
    ctx->save_for_backward({q, k, v.value_or(at::Tensor()), projection, context, ksum, stab});
    ctx->saved_data["kernel"] = std::string(kernel);
    ctx->saved_data["mode"] = std::string(mode);
    ctx->mark_non_differentiable({context, ksum, stab});
    return {out, context, ksum, stab};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<armour::PerformerBackward>("armour_kernels::performer_bwd");
    const variable_list s = ctx->get_saved_variables();
    auto [dq, dk, dv] = op.call(grads[0], s[0], s[1], maybe(s[2]), s[3], s[4], s[5], s[6],
                                ctx->saved_data["kernel"].toStringRef(), ctx->saved_data["mode"].toStringRef());
    return {dq, dk, grad_if(s[2], dv), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> nystrom_fwd_autograd(
    const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
    const std::optional<at::Tensor>& conv_weight, int64_t num_landmarks, int64_t pinv_iterations,
    c10::string_view mode) {
  const variable_list r = NystromFunction::apply(q, k, v, conv_weight, num_landmarks, pinv_iterations, mode);
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> performer_fwd_autograd(
    const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v, const at::Tensor& projection,
    c10::string_view kernel, c10::string_view mode) {
  const variable_list r = PerformerFunction::apply(q, k, v, projection, kernel, mode);
  return {r[0], r[1], r[2], r[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(armour_kernels, Autograd, m) {
  m.impl("nystrom_fwd", TORCH_FN(nystrom_fwd_autograd));
  m.impl("performer_fwd", TORCH_FN(performer_fwd_autograd));
  m.impl("nystrom_bwd", torch::autograd::autogradNotImplementedFallback());
  m.impl("performer_bwd", torch::autograd::autogradNotImplementedFallback());
}
