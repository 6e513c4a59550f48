// The attention kernels' torch-side entry points (host.cpp): argument checks, tensors described to
// the ISA kernels, outputs allocated. Registered as the CPU kernels of armour_kernels::attention /
// attention_backward in torch_ops/attention_cpu.cpp.
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

}  // namespace armour
