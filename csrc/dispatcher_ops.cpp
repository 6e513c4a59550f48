// CPU kernels registered with PyTorch's dispatcher, for calls that should not pass through Python.
//
// armour_kernels::attention_infer is the no-gradient attention forward (schema and fake kernel in
// armour_kernels/ops/attention.py), what CPU inference calls, eager or compiled. Compiled graphs call it from inductor's code:
// through the dispatcher straight into C++, where the Python custom op attention_fwd runs its
// Python body (argument plumbing, launcher lookup) on every call — ~20 µs a call with warm caches
// and ~80 µs between a model's large GEMMs, which evict that code (LeViT-128S at batch 1 makes 11
// such calls of 10-200 µs of kernel work each). AOTInductor packages call it the same way.
#include <torch/library.h>

#include "ops.h"

namespace {

at::Tensor attention_infer(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
                           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& bias_index,
                           c10::string_view value, double scale, bool mask_diagonal) {
  return armour::attention_forward(q, k, v, bias, bias_index, std::string(value), scale, mask_diagonal)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(armour_kernels, CPU, m) {
  m.impl("attention_infer", TORCH_FN(attention_infer));
}
