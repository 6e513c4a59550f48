// The armour_kernels operator library: every op's schema, in one place. The kernels are
// registered per dispatch key elsewhere: the CPU kernels in C++ (attention_cpu.cpp,
// linear_hardswish.cpp, linear_attention_cpu.cpp), autograd in C++ (attention_autograd.cpp,
// linear_hardswish.cpp, linear_attention_autograd.cpp), the CUDA kernels (Triton launchers) and
// the fake (meta) implementations from Python (armour_kernels/ops/). No schema takes a backend: which kernel runs
// is the dispatcher's choice from the tensors' device.
#include <torch/library.h>

TORCH_LIBRARY(armour_kernels, m) {
  // softmax(scale·q·kᵀ + bias)·value in the (B, N, H, D) layout (docs/layouts.md) -> (out, lse).
  // value: "v", "q", "k", "q+v", "q+k"; bias dense (broadcast to (B, H, Nq, Nk)) or, with
  // bias_index (Nq, Nk), the LeViT (H, R) table. lse (B, H, Nq) is float32 (float64 for float64).
  m.def(
      "attention(Tensor q, Tensor k, Tensor? v, Tensor? bias, Tensor? bias_index, str value, float scale, "
      "bool mask_diagonal) -> (Tensor, Tensor)");
  // -> (dq, dk, dv, dbias): dv empty without a v part, dbias empty unless need_dbias; dbias in the
  // bias's own shape and the accumulation dtype (float32, float64 for float64).
  m.def(
      "attention_backward(Tensor dout, Tensor q, Tensor k, Tensor? v, Tensor? bias, Tensor? bias_index, "
      "Tensor out, Tensor lse, str value, float scale, bool mask_diagonal, bool need_dbias) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // hardswish(x @ weightᵀ + bias): x (..., in), weight (out, in), bias (out,) or None, one dtype.
  m.def("linear_hardswish(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // The serving dense layer (inference only, docs/dense.md): act(act_in(x) @ Wᵀ + bias) + residual.
  // weight: dense_pack(W) (the micro-kernels' layout on this CPU) or W (out, in); act: the
  // Activation code (armour_kernels.constants); act_in: Hardswish on x first; norm_eps given:
  // LayerNorm(x; norm_weight, norm_bias, norm_eps) first instead (a pre-norm block's norm).
  m.def("dense_pack(Tensor weight) -> Tensor");
  m.def(
      "dense(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, int act, bool act_in, int out_features, "
      "Tensor? norm_weight=None, Tensor? norm_bias=None, float? norm_eps=None) -> Tensor");
  // The MLP as one call: dense(dense(x, weight1, bias1, act, norm) , weight2, bias2) + residual, the hidden
  // rows kept per block of rows in cache (no defaults: every argument positional in generated code).
  m.def(
      "dense_mlp(Tensor x, Tensor weight1, Tensor? bias1, int act, int hidden_features, Tensor weight2, "
      "Tensor? bias2, int out_features, Tensor? residual, Tensor? norm_weight, Tensor? norm_bias, float? norm_eps) "
      "-> Tensor");
  // An image (B, C, H, W) as the rows of a patchify GEMM, (B, (H/p)·(W/q), C·p·q) (inference only,
  // nn/patch_embed.py): a ViT / DeiT patch embedding is then one dense call.
  m.def("patch_rows(Tensor x, int patch_h, int patch_w) -> Tensor");
  // A network's first convolution on the NCHW image (inference only, docs/image_conv.md):
  // act(conv2d(x, weight, bias, stride, padding)) with square stride / padding, channels-last out.
  m.def("image_conv(Tensor x, Tensor weight, Tensor? bias, int stride, int padding, int act) -> Tensor");

  // Nyström and Performer (docs/nystrom.md, docs/performer.md): each family's forward, which also
  // returns what its backward needs, and that backward. v = None means value "q": the query is the
  // value and its gradient is inside dq. A gradient that does not exist (dv without v,
  // dconv_weight without a conv) comes back as an empty tensor.
  m.def(
      "nystrom_fwd(Tensor q, Tensor k, Tensor? v, Tensor? conv_weight, int num_landmarks, int pinv_iterations, "
      "str mode) -> (Tensor out, Tensor q_landmarks, Tensor k_landmarks, Tensor w, Tensor y, Tensor lse)");
  m.def(
      "nystrom_bwd(Tensor dout, Tensor q, Tensor k, Tensor? v, Tensor? conv_weight, Tensor q_landmarks, "
      "Tensor k_landmarks, Tensor w, Tensor y, Tensor lse, int num_landmarks, int pinv_iterations, str mode) "
      "-> (Tensor dq, Tensor dk, Tensor dv, Tensor dconv_weight)");
  m.def(
      "performer_fwd(Tensor q, Tensor k, Tensor? v, Tensor projection, str kernel, str mode) "
      "-> (Tensor out, Tensor ctx, Tensor ksum, Tensor stab)");
  m.def(
      "performer_bwd(Tensor dout, Tensor q, Tensor k, Tensor? v, Tensor projection, Tensor ctx, Tensor ksum, "
      "Tensor stab, str kernel, str mode) -> (Tensor dq, Tensor dk, Tensor dv)");
}
