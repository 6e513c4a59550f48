// Schemas of the Nyström and Performer ops (docs/layouts.md has their tensors): each family's
// forward, which also returns what its backward needs, and that backward. The CPU kernels are
// registered in linear_attention_cpu.cpp, autograd in linear_attention_autograd.cpp, the fake
// kernels and the CUDA (Triton) kernels from Python (armour_kernels/ops/nystrom.py, performer.py).
// v = None means value "q": the query is the value and its gradient is inside dq. A gradient
// that does not exist (dv without v, dconv_weight without a conv) comes back as an empty tensor.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(armour_kernels, m) {
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
