// Autograd of armour_kernels::attention, once for every device: saves what the backward needs,
// and the backward calls armour_kernels::attention_backward through the dispatcher (the C++ kernel
// on CPU, the Triton launcher on CUDA). Gradients add up where one tensor plays two parts (Armour:
// q is query and value; shared_qk: k is q): autograd sums the gradients of repeated inputs.
#include <torch/autograd.h>
#include <torch/library.h>

#include "torch_ops/attention_op.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::optional<at::Tensor> present(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

bool wants_grad(const at::Tensor& t) { return t.requires_grad(); }
bool wants_grad(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined() && t->requires_grad(); }

class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& bias_index, c10::string_view value, double scale,
                               bool mask_diagonal) {
    at::Tensor out, lse;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(out, lse) = armour::attention_op().call(q, k, v, bias, bias_index, value, scale, mask_diagonal);
    }
    const at::Tensor none;
    ctx->save_for_backward({q, k, v.value_or(none), bias.value_or(none), bias_index.value_or(none), out, lse});
    ctx->saved_data["value"] = std::string(value);
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["mask_diagonal"] = mask_diagonal;
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("armour_kernels::attention_backward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                             const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,
                             const at::Tensor&, c10::string_view, double, bool, bool)>();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &bias = saved[3], &index = saved[4];
    const at::Tensor &out = saved[5], &lse = saved[6];
    const std::string value = ctx->saved_data["value"].toStringRef();
    at::Tensor dout = grads[0].defined() ? grads[0] : at::zeros_like(out);
    // The bias gradient costs a full extra pass: only when the bias wants one. Its edge index
    // counts only the tensor inputs given (q, k, then v when present).
    const bool need_dbias = bias.defined() && ctx->needs_input_grad(v.defined() ? 3 : 2);
    auto [dq, dk, dv, dbias] = op.call(dout, q, k, present(v), present(bias), present(index), out, lse, value,
                                       ctx->saved_data["scale"].toDouble(),
                                       ctx->saved_data["mask_diagonal"].toBool(), need_dbias);
    const bool has_dv = v.defined() && value.find('v') != std::string::npos;
    return {dq, dk, has_dv ? dv : at::Tensor(), need_dbias ? dbias.to(bias.scalar_type()) : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> attention_autograd(const at::Tensor& q, const at::Tensor& k,
                                                      const std::optional<at::Tensor>& v,
                                                      const std::optional<at::Tensor>& bias,
                                                      const std::optional<at::Tensor>& bias_index,
                                                      c10::string_view value, double scale, bool mask_diagonal) {
  if (!at::GradMode::is_enabled() ||
      !(wants_grad(q) || wants_grad(k) || wants_grad(v) || wants_grad(bias))) {
    // No graph to record (inference): straight to the kernel, without the autograd node, its
    // saved tensors and options (~6 µs of a tiny call).
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return armour::attention_op().call(q, k, v, bias, bias_index, value, scale, mask_diagonal);
  }
  variable_list r = AttentionFunction::apply(q, k, v, bias, bias_index, value, scale, mask_diagonal);
  return {r[0], r[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(armour_kernels, Autograd, m) {
  m.impl("attention", TORCH_FN(attention_autograd));
}
