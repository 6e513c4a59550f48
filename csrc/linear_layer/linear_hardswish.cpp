// Torch side of the Linear + Hardswish layer on the CPU: the GEMM on oneDNN (with Hardswish as
// its fused post-op) or ATen, and the vectorised bias + Hardswish epilogue of the ISA kernels (the
// dense layer's, linear_layer/dense.h).
#include "linear_layer/linear_hardswish.h"

#include "linear_layer/dense.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "kernels/kernel_api.h"
#include "torch_glue.h"

namespace armour {

namespace {

// oneDNN's linear with a fused post-op (the op inductor uses for Linear + pointwise on CPU),
// looked up in the dispatcher: absent when torch is built without oneDNN.
const c10::OperatorHandle* onednn_linear_pointwise() {
  static const std::optional<c10::OperatorHandle> handle =
      c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  return handle.has_value() ? &*handle : nullptr;
}

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const char* post_op) {
  torch::jit::Stack stack;
  stack.emplace_back(x);
  stack.emplace_back(weight);
  stack.emplace_back(bias.defined() ? c10::IValue(bias) : c10::IValue());
  stack.emplace_back(std::string(post_op));
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  stack.emplace_back(c10::IValue());
  onednn_linear_pointwise()->callBoxed(stack);
  return stack.back().toTensor();
}

// Whether oneDNN has bf16 kernels on this CPU (AVX512-BF16 / AMX / AVX-NE-CONVERT; not on AVX2-only
// CPUs, where its primitive descriptor cannot be created), asked once through torch's own check.
bool onednn_has_bf16() {
  static const bool has = [] {
    const auto handle = c10::Dispatcher::singleton().findSchema({"mkldnn::_is_mkldnn_bf16_supported", ""});
    if (!handle.has_value()) return false;
    torch::jit::Stack stack;
    handle->callBoxed(stack);
    return stack.back().toBool();
  }();
  return has;
}

}  // namespace

bool has_onednn_linear() { return onednn_linear_pointwise() != nullptr; }

bool has_onednn_linear(at::ScalarType dtype) {
  return has_onednn_linear() && (dtype == at::kFloat || (dtype == at::kBFloat16 && onednn_has_bf16()));
}

at::Tensor linear_hardswish(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::string& gemm) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "armour_kernels._C linear_hardswish: CPU tensors only");
  kernel_dtype(x, "x");  // float32 / bfloat16 / float64, else a clear error
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "armour_kernels._C linear_hardswish: weight dtype ",
              weight.scalar_type(), " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1),
              "armour_kernels._C linear_hardswish: need x (..., in) and weight (out, in), got x ", x.sizes(),
              " weight ", weight.sizes());
  TORCH_CHECK(gemm == "auto" || gemm == "onednn_fused" || gemm == "onednn" || gemm == "aten",
              "armour_kernels._C linear_hardswish: gemm must be auto, onednn_fused, onednn or aten; got '", gemm, "'");
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0) && bias->scalar_type() == x.scalar_type(),
                "armour_kernels._C linear_hardswish: bias must be (out,) with x's dtype, got ", bias->sizes(), " ",
                bias->scalar_type());
    b = bias->contiguous();
  }
  const bool onednn_ok = has_onednn_linear(x.scalar_type()) && x.numel() > 0;
  std::string how = gemm;
  if (how == "auto") how = onednn_ok ? "onednn_fused" : "aten";
  TORCH_CHECK(how == "aten" || onednn_ok, "armour_kernels._C linear_hardswish: gemm='", gemm,
              "' needs torch with oneDNN and float32 inputs, or bfloat16 on a CPU where oneDNN has bfloat16 kernels "
              "(AVX512-BF16 or AMX); got ", x.scalar_type());
  if (how == "onednn_fused") return onednn_linear(x.contiguous(), weight.contiguous(), b, "hardswish");
  // GEMM without bias, then one pass: bias + Hardswish in place (the dense layer's epilogue).
  at::Tensor y = how == "onednn" ? onednn_linear(x.contiguous(), weight.contiguous(), at::Tensor(), "none")
                                 : at::matmul(x, weight.t()).contiguous();
  const int64_t cols = weight.size(0);
  if (y.numel() > 0) epilogue_in_place(y.view({-1, cols}), b, at::Tensor(), static_cast<int64_t>(Act::hardswish));
  return y;
}

}  // namespace armour
