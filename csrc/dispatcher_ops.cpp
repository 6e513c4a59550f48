// CPU kernels registered with PyTorch's dispatcher, for calls that should not pass through Python.
//
// armour_kernels::attention_infer is the no-gradient attention forward (schema and fake kernel in
// armour_kernels/ops/attention.py). torch.compile'd inference graphs call it from inductor's code:
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
  const std::string value_source(value);
  if (q.scalar_type() != at::kHalf) {
    // float16 biases are widened like the Python launcher does (the kernels read fp32 / bf16 / fp64 biases).
    std::optional<at::Tensor> b = bias;
    if (b.has_value() && b->defined() && b->scalar_type() == at::kHalf) b = b->to(at::kFloat);
    return armour::attention_forward(q, k, v, b, bias_index, value_source, scale, mask_diagonal)[0];
  }
  // float16: computed in float32 (no fp16 engine on these CPUs) and rounded once.
  std::optional<at::Tensor> v32, b32;
  if (v.has_value() && v->defined()) v32 = v->to(at::kFloat);
  if (bias.has_value() && bias->defined()) b32 = bias->scalar_type() == at::kHalf ? bias->to(at::kFloat) : *bias;
  return armour::attention_forward(q.to(at::kFloat), k.to(at::kFloat), v32, b32, bias_index, value_source, scale,
                                   mask_diagonal)[0].to(at::kHalf);
}

}  // namespace

TORCH_LIBRARY_IMPL(armour_kernels, CPU, m) {
  m.impl("attention_infer", TORCH_FN(attention_infer));
}
