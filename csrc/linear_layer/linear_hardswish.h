// The Linear + Hardswish layer's CPU entry points (linear_hardswish.cpp): the kernel of the
// armour_kernels::linear_hardswish op (torch_ops/linear_hardswish.cpp) and, with an engine named,
// what the tests and benchmarks call to force one (bindings.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace armour {

// hardswish(x @ weightᵀ + bias). gemm: "onednn_fused" (oneDNN GEMM with bias + Hardswish as its
// post-op, in registers), "onednn" / "aten" (oneDNN / at::matmul GEMM, then our vectorised
// bias + Hardswish pass in place), "auto" (onednn_fused when torch has oneDNN and the dtype is
// float32 / bfloat16, else aten).
at::Tensor linear_hardswish(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::string& gemm);
bool has_onednn_linear();

}  // namespace armour
