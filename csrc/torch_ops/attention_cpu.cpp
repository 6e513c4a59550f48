// The CPU kernels of armour_kernels::attention / attention_backward (attention/host.cpp) behind the dispatcher:
// eager calls, compiled graphs and AOTInductor packages reach them with no Python on the call.
#include <torch/library.h>

#include "attention/host.h"

namespace {

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                 const std::optional<at::Tensor>& v,
                                                 const std::optional<at::Tensor>& bias,
                                                 const std::optional<at::Tensor>& bias_index, c10::string_view value,
                                                 double scale, bool mask_diagonal) {
  std::vector<at::Tensor> r =
      armour::attention_forward(q, k, v, bias, bias_index, std::string(value), scale, mask_diagonal);
  return {r[0], r[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& bias_index, const at::Tensor& out,
    const at::Tensor& lse, c10::string_view value, double scale, bool mask_diagonal, bool need_dbias) {
  std::vector<at::Tensor> r = armour::attention_backward(dout, q, k, v, bias, bias_index, out, lse, std::string(value),
                                                         scale, mask_diagonal, need_dbias);
  return {r[0], r[1], r[2], r[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(armour_kernels, CPU, m) {
  m.impl("attention", TORCH_FN(attention_cpu));
  m.impl("attention_backward", TORCH_FN(attention_backward_cpu));
}
