// Torch-side entry points of the CPU Nyström and Performer kernels (nystrom_ops.cpp,
// performer_ops.cpp), bound in bindings.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

namespace armour {

// q, k (B, Nq|Nk, H, D), v (B, Nk, H, Dv) or none (value "q"), float32, any strides; projection (m, D).
// Returns {out (B, Nq, H, Dv), ctx (B·H, m, Dv), ksum (B·H, m), stab (B·H)}, all float32.
std::vector<at::Tensor> performer_forward(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
                                          const at::Tensor& projection, const std::string& kernel,
                                          const std::string& mode);

// Gradients (dq, dk, dv or undefined for value "q") from the forward's ctx, ksum, stab.
std::vector<at::Tensor> performer_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                           const std::optional<at::Tensor>& v, const at::Tensor& projection,
                                           const at::Tensor& ctx, const at::Tensor& ksum, const at::Tensor& stab,
                                           const std::string& kernel, const std::string& mode);

// q, k (B, N, H, D) unpadded, q unscaled, v (B, N, H, Dv) or none (value "q"), float32, any strides;
// conv_weight (H, 1, K, 1) or none. Returns {out (B, N, H, Dv), q̃, k̃ (B·H, m, D), W, Y (B·H, m, Dv),
// lse3 (B·H, m)}, all float32.
std::vector<at::Tensor> nystrom_forward(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
                                        const std::optional<at::Tensor>& conv_weight, int64_t num_landmarks,
                                        int64_t pinv_iterations, const std::string& mode);

// Gradients {dq, dk, dv (undefined for value "q"), dconv_weight (H, 1, K, 1) (undefined without
// conv)}, float32, from dout (B, N, H, Dv) and what the forward saved (q̃, k̃, W, Y, lse3).
std::vector<at::Tensor> nystrom_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                         const std::optional<at::Tensor>& v,
                                         const std::optional<at::Tensor>& conv_weight, const at::Tensor& ql,
                                         const at::Tensor& kl, const at::Tensor& w, const at::Tensor& y,
                                         const at::Tensor& lse, int64_t num_landmarks, int64_t pinv_iterations,
                                         const std::string& mode);

}  // namespace armour
