// Torch-side entry points of armour_kernels._C (implemented in ops.cpp, bound in bindings.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

namespace armour {

// Launcher contract (docs/layouts.md): q (B, Nq, H, Dk), k (B, Nk, H, Dk), v (B, Nk, H, Dv) or none,
// any strides. Returns {out (B, Nq, H, Dv_total) contiguous, lse (B, H, Nq)}.
std::vector<at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
                                          const std::optional<at::Tensor>& bias,
                                          const std::optional<at::Tensor>& bias_index, const std::string& value,
                                          double scale, bool mask_diagonal);

// Returns {dq, dk, dv or undefined (None), dbias or undefined (None)}.
std::vector<at::Tensor> attention_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                           const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& bias,
                                           const std::optional<at::Tensor>& bias_index, const at::Tensor& out,
                                           const at::Tensor& lse, const std::string& value, double scale,
                                           bool mask_diagonal, bool need_dbias);

// hardswish(x @ weightᵀ + bias). gemm: "onednn_fused" (oneDNN GEMM with bias + Hardswish as its
// post-op, in registers), "onednn" / "aten" (oneDNN / at::matmul GEMM, then our vectorised
// bias + Hardswish pass in place), "auto" (onednn_fused when torch has oneDNN and the dtype is
// float32 / bfloat16, else aten).
at::Tensor linear_hardswish(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::string& gemm);
bool has_onednn_linear();

}  // namespace armour
