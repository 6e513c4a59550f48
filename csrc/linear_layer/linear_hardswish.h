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
// bias + Hardswish pass in place), "auto" (onednn_fused where oneDNN runs the dtype on this CPU:
// float32, or bfloat16 on AVX512-BF16 / AMX; else aten).
at::Tensor linear_hardswish(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::string& gemm);
bool has_onednn_linear();
// ... and whether it runs this dtype on this CPU (float32; bfloat16 only where oneDNN has bf16 kernels).
bool has_onednn_linear(at::ScalarType dtype);

}  // namespace armour
