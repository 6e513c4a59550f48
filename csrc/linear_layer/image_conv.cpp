// Torch side of the image convolution (image_conv.h): checks, the weight as fp32 taps × output
// channels, scratch, threads; the arithmetic is the ISA kernel's (kernels/image_conv.h).
#include "linear_layer/image_conv.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "kernels/kernel_api.h"
#include "torch_glue.h"

namespace armour {

#define IMAGE_CONV_CHECK(cond, ...) TORCH_CHECK(cond, "armour_kernels::image_conv: ", __VA_ARGS__)

at::Tensor image_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias_opt,
                      int64_t stride, int64_t padding, int64_t act) {
  IMAGE_CONV_CHECK(x.dim() == 4, "x must be (B, C, H, W), got ", x.sizes());
  IMAGE_CONV_CHECK(weight.dim() == 4 && weight.size(1) == x.size(1),
                   "weight must be (out_channels, ", x.size(1), ", kh, kw) for x ", x.sizes(), ", got ", weight.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
                   "armour_kernels::image_conv: x must be float32 or bfloat16, got ", x.scalar_type());
  // The convolution's dtype is the weight's: x's, or bf16 for a float32 image (each value rounded to
  // bf16 as the kernel reads it: the result of x.to(bfloat16) first, without that pass over memory).
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type() ||
                       (x.scalar_type() == at::kFloat && weight.scalar_type() == at::kBFloat16),
                   "armour_kernels::image_conv: weight must be ", x.scalar_type(), " like x",
                   x.scalar_type() == at::kFloat ? " (or bfloat16)" : "", ", got ", weight.scalar_type());
  const at::ScalarType dtype = weight.scalar_type();
  const at::Tensor bias = bias_opt.has_value() ? *bias_opt : at::Tensor();
  if (bias.defined()) {
    IMAGE_CONV_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "bias must be (", weight.size(0),
                     ",), got ", bias.sizes());
    TORCH_CHECK_TYPE(bias.scalar_type() == dtype, "armour_kernels::image_conv: bias must be ", dtype,
                     " like the weight, got ", bias.scalar_type());
  }
  IMAGE_CONV_CHECK(stride >= 1 && padding >= 0, "stride must be >= 1 and padding >= 0, got ", stride, ", ", padding);
  IMAGE_CONV_CHECK(act >= 0 && act <= static_cast<int64_t>(Act::silu), "unknown activation code ", act);
  IMAGE_CONV_CHECK(x.device().is_cpu() && weight.device().is_cpu() && (!bias.defined() || bias.device().is_cpu()),
                   "CPU tensors only");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Cout = weight.size(0), KH = weight.size(2), KW = weight.size(3);
  IMAGE_CONV_CHECK(KH >= 1 && KW >= 1 && H + 2 * padding >= KH && W + 2 * padding >= KW,
                   "kernel ", KH, "x", KW, " larger than the padded input ", H + 2 * padding, "x", W + 2 * padding);
  const int64_t Ho = (H + 2 * padding - KH) / stride + 1, Wo = (W + 2 * padding - KW) / stride + 1;
  at::Tensor y = at::empty({B, Cout, Ho, Wo}, x.options().dtype(dtype).memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;

  // (C·KH·KW, cout_pad) fp32: row t = (c, ky, kx) holds the weights of every output channel, so the
  // kernel loads one vector per tap; padded to a multiple of 16 lanes with zeros.
  const int64_t cout_pad = (Cout + 15) / 16 * 16;
  at::Tensor w = at::zeros({C * KH * KW, cout_pad}, x.options().dtype(at::kFloat));
  w.narrow(1, 0, Cout).copy_(weight.permute({1, 2, 3, 0}).reshape({C * KH * KW, Cout}));
  at::Tensor b = at::zeros({cout_pad}, x.options().dtype(at::kFloat));
  if (bias.defined()) b.narrow(0, 0, Cout).copy_(bias);

  ImageConvArgs a;
  a.dtype = kernel_dtype(y, "weight");
  a.x_dtype = kernel_dtype(x, "x");
  a.B = B; a.C = C; a.H = H; a.W = W;
  a.x = x.data_ptr();
  a.sb = x.stride(0); a.sc = x.stride(1); a.sh = x.stride(2); a.sw = x.stride(3);
  a.KH = KH; a.KW = KW; a.stride = stride; a.pad = padding; a.Ho = Ho; a.Wo = Wo; a.Cout = Cout;
  a.cout_pad = cout_pad;
  a.weight = w.data_ptr<float>();
  a.bias = b.data_ptr<float>();
  a.y = y.data_ptr();
  a.act = static_cast<Act>(act);
  a.n_chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B * Ho));
  a.scratch_floats = image_conv_scratch(C, KH, KW, stride, Wo, cout_pad);
  at::Tensor scratch = at::empty({a.n_chunks, a.scratch_floats}, x.options().dtype(at::kFloat));
  a.scratch = scratch.data_ptr<float>();
  a.parallel_for = &torch_parallel_for;
  current_kernels().image_conv(a);
  return y;
}

}  // namespace armour
