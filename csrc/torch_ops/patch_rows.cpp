// armour_kernels::patch_rows: an image cut into the rows of a patchify GEMM (a ViT / DeiT patch
// embedding as one dense-op call, nn/patch_embed.py).
//
//   x (B, C, H, W) → (B, (H / p) · (W / q), C · p · q), row (gy, gx) = x[b, :, gy·p:(gy+1)·p, gx·q:(gx+1)·q]
//
// pixels past the last whole patch dropped (a convolution's floor). An op of its own, not a
// reshape / permute in the graph: inductor folds that permute's 6-D indices into the 2-D shape the
// dense op reads and copies element by element with index divisions (DeiT's 224² image: ~300 µs),
// while here each patch row (16 pixels of an image row) is one memcpy. Inference only, as the dense
// op it feeds: the autograd kernel refuses a call that needs a gradient.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

namespace {

// y (B, gh·gw, C·p·q) from x with unit pixel stride, element by element as T (the element's size: a
// plain copy): one task per row of patches, each patch row (q pixels) an inner loop the compiler
// vectorises (a memcpy call per 16-pixel run cost more than the copy).
template <class T>
void copy_patches(const at::Tensor& x, at::Tensor& y, int64_t p, int64_t q) {
  const int64_t C = x.size(1), gh = y.size(1) == 0 ? 0 : x.size(2) / p, gw = x.size(3) / q, K = C * p * q;
  const T* src = static_cast<const T*>(x.data_ptr());
  T* dst = static_cast<T*>(y.data_ptr());
  const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2);
  at::parallel_for(0, x.size(0) * gh, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {  // (b, gy)
      const int64_t b = task / gh, gy = task % gh;
      T* out = dst + task * gw * K;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t py = 0; py < p; ++py) {
          const T* in = src + b * sb + c * sc + (gy * p + py) * sh;
          T* o = out + (c * p + py) * q;
          for (int64_t gx = 0; gx < gw; ++gx)
            for (int64_t k = 0; k < q; ++k) o[gx * K + k] = in[gx * q + k];
        }
    }
  });
}

at::Tensor patch_rows(const at::Tensor& x, int64_t patch_h, int64_t patch_w) {
  TORCH_CHECK(x.dim() == 4, "armour_kernels::patch_rows: x must be (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(patch_h > 0 && patch_w > 0, "armour_kernels::patch_rows: patch sizes must be positive, got ", patch_h,
              " x ", patch_w);
  const int64_t B = x.size(0), C = x.size(1), gh = x.size(2) / patch_h, gw = x.size(3) / patch_w;
  const int64_t K = C * patch_h * patch_w;
  at::Tensor y = at::empty({B, gh * gw, K}, x.options());
  if (y.numel() == 0) return y;
  // Image rows with unit pixel stride are copied a patch row (patch_w pixels) at a time; any other
  // layout (channels-last, a view) goes through ATen's strided copy.
  if (x.stride(3) != 1) {
    const at::Tensor crop = x.narrow(2, 0, gh * patch_h).narrow(3, 0, gw * patch_w);
    y.view({B, gh, gw, C, patch_h, patch_w})
        .copy_(crop.unflatten(3, {gw, patch_w}).unflatten(2, {gh, patch_h}).permute({0, 2, 4, 1, 3, 5}));
    return y;
  }
  switch (x.element_size()) {
    case 2: copy_patches<uint16_t>(x, y, patch_h, patch_w); break;
    case 4: copy_patches<uint32_t>(x, y, patch_h, patch_w); break;
    default: copy_patches<uint64_t>(x, y, patch_h, patch_w); break;
  }
  return y;
}

at::Tensor patch_rows_autograd(const at::Tensor& x, int64_t patch_h, int64_t patch_w) {
  TORCH_CHECK(!at::GradMode::is_enabled() || !x.requires_grad(),
              "armour_kernels::patch_rows is inference-only (no gradient); train with the patch convolution");
  // Through the dispatcher (not the function above): a tracer's fake kernel must see the op, not its ATen insides.
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("armour_kernels::patch_rows", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, int64_t)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(x, patch_h, patch_w);
}

}  // namespace

TORCH_LIBRARY_IMPL(armour_kernels, CPU, m) { m.impl("patch_rows", TORCH_FN(patch_rows)); }

TORCH_LIBRARY_IMPL(armour_kernels, Autograd, m) { m.impl("patch_rows", TORCH_FN(patch_rows_autograd)); }
