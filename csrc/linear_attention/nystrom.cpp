// Torch side of the CPU Nyström kernels (docs/nystrom.md): checks, outputs, and the order of the
// passes (kernels/nystrom_kernel.h, nystrom_pinv_kernel.h, nystrom_backward_kernel.h) with the
// (B·H, m, ·)-sized work between them in ATen: the m×m softmax A2 and the pinv's scale
// (nystrom_pinv.cpp), merging the per-split online softmaxes of W = A3·v, and summing per-split
// gradient partials.
#include <ATen/ATen.h>

#include <cmath>

#include "linear_attention/host.h"
#include "linear_attention/ops.h"
#include "linear_attention/nystrom_pinv.h"

namespace armour {
namespace {

using namespace linear;

// Checks q, k, v, conv_weight and fills the arguments every pass shares; `conv` keeps the fp32
// (H, K) copy of the conv weight alive.
NystromArgs describe_nystrom(const char* op, const at::Tensor& q, const at::Tensor& k,
                             const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& conv_weight,
                             int64_t num_landmarks, int64_t pinv_iterations, const std::string& mode,
                             at::Tensor* conv) {
  check_qk(op, q, k);
  TORCH_CHECK(q.size(1) == k.size(1), "armour_kernels::", op, ": q and k must have the same length, got ",
              q.size(1), " and ", k.size(1));
  const at::Tensor& val = value_of(op, q, k, v);
  TORCH_CHECK(num_landmarks >= 1, "armour_kernels::", op, ": num_landmarks must be ≥ 1, got ", num_landmarks);
  TORCH_CHECK(pinv_iterations >= 0, "armour_kernels::", op, ": pinv_iterations must be ≥ 0, got ", pinv_iterations);
  check_mode(op, mode);
  NystromArgs a;
  a.p = linear_plan(q.size(0), q.size(2), q.size(3), val.size(3), num_landmarks);
  a.N = q.size(1);
  a.Np = (a.N + num_landmarks - 1) / num_landmarks * num_landmarks;
  a.pad = a.Np - a.N;
  a.group = a.Np / num_landmarks;
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(a.p.D)));
  a.q = strided4(q);
  a.k = strided4(k);
  a.v = strided4(val);
  a.p.splits = choose_splits(a.p.B * a.p.H, a.N);
  a.iterations = static_cast<int>(pinv_iterations);
  if (conv_weight.has_value() && conv_weight->defined()) {
    const at::Tensor& w = *conv_weight;
    TORCH_CHECK(w.device().is_cpu() && w.dim() == 4 && w.size(0) == a.p.H && w.size(1) == 1 && w.size(3) == 1 &&
                    w.size(2) % 2 == 1,
                "armour_kernels::", op, ": conv_weight must be a CPU (H, 1, K, 1) tensor with H = ", a.p.H,
                " and K odd, got ", w.sizes());
    *conv = w.to(at::kFloat).reshape({a.p.H, w.size(2)}).contiguous();
    a.conv = conv->data_ptr<float>();
    a.K = w.size(2);
  }
  return a;
}

at::Tensor landmark_softmax(const at::Tensor& ql, const at::Tensor& kl) {
  return at::_softmax(at::bmm(ql, kl.transpose(1, 2)), -1, false);  // A2 (B·H, m, m)
}

// The passes on float32 q, k, v (nystrom_fwd_cpu converts): {out, q̃, k̃, W, Y, lse3}.
std::vector<at::Tensor> nystrom_forward(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
                                        const std::optional<at::Tensor>& conv_weight, int64_t num_landmarks,
                                        int64_t pinv_iterations, const std::string& mode) {
  at::Tensor conv;
  NystromArgs a = describe_nystrom("nystrom_fwd", q, k, v, conv_weight, num_landmarks, pinv_iterations, mode, &conv);
  const LinearKernelTable& kernels = current_linear_kernels();
  const int64_t BH = a.p.B * a.p.H, M = a.p.M, T = BH * a.p.splits;
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor ql = at::empty({BH, M, a.p.D}, f32), kl = at::empty({BH, M, a.p.D}, f32);
  a.ql = ql.data_ptr<float>();
  a.kl = kl.data_ptr<float>();
  kernels.nystrom_landmarks(a);

  const at::Tensor a2 = landmark_softmax(ql, kl);
  const linear::PinvScale scale = linear::pinv_scale(a2, mode == "seed");

  at::Tensor part_max = at::empty({T, M}, f32), part_sum = at::empty({T, M}, f32);
  at::Tensor part_acc = at::empty({T, M, a.p.Dv}, f32);
  a.part_max = part_max.data_ptr<float>();
  a.part_sum = part_sum.data_ptr<float>();
  a.part_acc = part_acc.data_ptr<float>();
  kernels.nystrom_key_forward(a);
  // Merge the splits' online softmaxes: rescale each to the common max (split 0 always has keys).
  at::Tensor w, lse;
  if (a.p.splits == 1) {
    w = part_acc / part_sum.unsqueeze(-1);
    lse = part_max + part_sum.log();
  } else {
    const at::Tensor mx = part_max.view({BH, a.p.splits, M});
    const at::Tensor top = mx.amax(1, /*keepdim=*/true);
    const at::Tensor f = (mx - top).exp_();
    const at::Tensor sum = (part_sum.view({BH, a.p.splits, M}) * f).sum(1);
    w = ((part_acc.view({BH, a.p.splits, M, a.p.Dv}) * f.unsqueeze(-1)).sum(1) / sum.unsqueeze(-1)).contiguous();
    lse = (top.squeeze(1) + sum.log()).contiguous();
  }

  // Y = pinv(A2)·W
  at::Tensor y = at::empty({BH, M, a.p.Dv}, f32);
  a.a2 = a2.data_ptr<float>();
  a.denom = scale.denom.data_ptr<float>();
  a.w = w.data_ptr<float>();
  a.y = y.data_ptr<float>();
  kernels.nystrom_pinv(a);

  at::Tensor out = at::empty({a.p.B, a.N, a.p.H, a.p.Dv}, f32);
  a.out = out.data_ptr<float>();
  kernels.nystrom_output(a);
  return {out, ql, kl, w, y, lse};
}

// The gradient passes on float32 dout, q, k, v: {dq, dk, dv (undefined without v), dconv_weight
// (undefined without a conv)}, all float32.
std::vector<at::Tensor> nystrom_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                         const std::optional<at::Tensor>& v,
                                         const std::optional<at::Tensor>& conv_weight, const at::Tensor& ql,
                                         const at::Tensor& kl, const at::Tensor& w, const at::Tensor& y,
                                         const at::Tensor& lse, int64_t num_landmarks, int64_t pinv_iterations,
                                         const std::string& mode) {
  const char* op = "nystrom_bwd";
  at::Tensor conv;
  NystromArgs a = describe_nystrom(op, q, k, v, conv_weight, num_landmarks, pinv_iterations, mode, &conv);
  const LinearKernelTable& kernels = current_linear_kernels();
  const int64_t B = a.p.B, H = a.p.H, D = a.p.D, Dv = a.p.Dv, BH = B * H, M = a.p.M, S = a.p.splits, T = BH * S;
  check_f32_4d(op, dout, "dout");
  TORCH_CHECK(dout.size(0) == B && dout.size(1) == a.N && dout.size(2) == H && dout.size(3) == Dv,
              "armour_kernels::", op, ": dout must be (B, N, H, Dv) = (", B, ", ", a.N, ", ", H, ", ", Dv,
              "), got ", dout.sizes());
  a.ql = saved_f32(op, ql, {BH, M, D}, "q_landmarks");
  a.kl = saved_f32(op, kl, {BH, M, D}, "k_landmarks");
  a.w = saved_f32(op, w, {BH, M, Dv}, "w");
  a.y = saved_f32(op, y, {BH, M, Dv}, "y");
  a.lse = saved_f32(op, lse, {BH, M}, "lse");
  a.dout = strided4(dout);
  const bool seed = mode == "seed";
  const auto f32 = q.options().dtype(at::kFloat);

  at::Tensor dq = at::empty({B, a.N, H, D}, f32), dk = at::empty({B, a.N, H, D}, f32), dv;
  if (v.has_value() && v->defined()) dv = at::empty({B, a.N, H, Dv}, f32);
  a.dq = dq.data_ptr<float>();
  a.dk = dk.data_ptr<float>();
  a.dv = dv.defined() ? dv.data_ptr<float>() : nullptr;

  // 1. queries: dq from A1, and per split dYᵀ, dk̃ᵀ
  at::Tensor part_dyt = at::empty({T, Dv, M}, f32), part_dklt = at::empty({T, D, M}, f32);
  a.part_dyt = part_dyt.data_ptr<float>();
  a.part_dklt = part_dklt.data_ptr<float>();
  kernels.nystrom_query_grad(a);
  const at::Tensor dy = sum_splits(part_dyt, BH, S).transpose(1, 2).contiguous();
  at::Tensor dkl = sum_splits(part_dklt, BH, S).transpose(1, 2).mul(a.scale);

  // the m×m part: Y = Z W, Z = pinv(A2) (the iterations per (b, h), their scale here), A2 = softmax(q̃ k̃ᵀ)
  const at::Tensor a2 = landmark_softmax(ql, kl);
  const linear::PinvScale scale = linear::pinv_scale(a2, seed);
  at::Tensor dw = at::empty({BH, M, Dv}, f32), da2 = at::empty({BH, M, M}, f32), dc = at::empty({BH}, f32);
  a.a2 = a2.data_ptr<float>();
  a.denom = scale.denom.data_ptr<float>();
  a.dy = dy.data_ptr<float>();
  a.dw = dw.data_ptr<float>();
  a.da2 = da2.data_ptr<float>();
  a.dc = dc.data_ptr<float>();
  kernels.nystrom_pinv_grad(a);
  da2.add_(linear::pinv_scale_backward(a2, scale, dc, seed));
  const at::Tensor ds2 = a2 * (da2 - (a2 * da2).sum(-1, /*keepdim=*/true));
  at::Tensor dql = at::bmm(ds2, kl);
  dkl = dkl.baddbmm(ds2.transpose(1, 2), ql).contiguous();
  const at::Tensor delta = (dw * w).sum(-1).contiguous();  // rowsum(A3∘dA3) = dW·W

  // 2. keys: dk, dv, and per split dq̃ᵀ, the conv weight's gradient
  at::Tensor part_dqlt = at::empty({T, D, M}, f32), part_dconv = at::empty({T, a.K > 0 ? a.K : 1}, f32);
  a.delta = delta.data_ptr<float>();
  a.dkl = dkl.data_ptr<float>();
  a.part_dqlt = part_dqlt.data_ptr<float>();
  a.part_dconv = part_dconv.data_ptr<float>();
  kernels.nystrom_key_grad(a);
  dql = dql.add_(sum_splits(part_dqlt, BH, S).transpose(1, 2)).contiguous();

  // 3. queries again: dq += D^-1/2 dq̃[landmark] / l
  a.dql = dql.data_ptr<float>();
  kernels.nystrom_landmark_grad(a);

  at::Tensor dconv;
  if (a.conv) dconv = part_dconv.view({B, H, S, a.K}).sum(at::IntArrayRef{0, 2}).reshape({H, 1, a.K, 1});
  return {dq, dk, dv, dconv};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> nystrom_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
    const std::optional<at::Tensor>& conv_weight, int64_t num_landmarks, int64_t pinv_iterations,
    c10::string_view mode) {
  const char* op = "nystrom_fwd";
  std::vector<at::Tensor> r = nystrom_forward(to_f32(op, q, "q"), to_f32(op, k, "k"), to_f32(op, v, "v"), conv_weight,
                                              num_landmarks, pinv_iterations, std::string(mode));
  return {r[0].to(q.scalar_type()), r[1], r[2], r[3], r[4], r[5]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nystrom_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
    const std::optional<at::Tensor>& conv_weight, const at::Tensor& q_landmarks, const at::Tensor& k_landmarks,
    const at::Tensor& w, const at::Tensor& y, const at::Tensor& lse, int64_t num_landmarks, int64_t pinv_iterations,
    c10::string_view mode) {
  const char* op = "nystrom_bwd";
  std::vector<at::Tensor> g =
      nystrom_backward(to_f32(op, dout, "dout"), to_f32(op, q, "q"), to_f32(op, k, "k"), to_f32(op, v, "v"),
                       conv_weight, q_landmarks, k_landmarks, w, y, lse, num_landmarks, pinv_iterations,
                       std::string(mode));
  const at::Tensor none = at::empty({0}, q.options());
  return {g[0].to(q.scalar_type()), g[1].to(k.scalar_type()), g[2].defined() ? g[2].to(v->scalar_type()) : none,
          g[3].defined() ? g[3].to(conv_weight->scalar_type()) : none};
}

}  // namespace armour
