// The per-version cache behind checked_bias_index (bias_index.h).
#include "torch_ops/bias_index.h"

#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include <deque>
#include <mutex>

namespace armour {
namespace {

struct Checked {
  // Weak: the cache never keeps an index alive, and while this entry exists the TensorImpl's
  // memory is not reused, so a pointer match is the same tensor.
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> tensor;
  uint32_t version;
  int64_t table_width;
  at::Tensor wide;  // the contiguous int64 copy; undefined when the index already is one (no strong reference)
};

constexpr size_t kEntries = 64;  // index tensors remembered (a LeViT has one per attention block)
std::mutex cache_mutex;
std::deque<Checked> cache;

at::Tensor widen_and_check(const at::Tensor& index, int64_t table_width) {
  at::Tensor wide = index.to(at::kLong).contiguous();
  if (wide.numel() > 0) {
    auto [lo, hi] = at::aminmax(wide);
    TORCH_CHECK_VALUE(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < table_width,
                      "attention: bias_index has entries outside the table's [0, ", table_width, ")");
  }
  return wide;
}

}  // namespace

at::Tensor checked_bias_index(const at::Tensor& index, int64_t nq, int64_t nk, int64_t table_width,
                              const c10::Device& device) {
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong || index.scalar_type() == at::kInt,
                   "attention: bias_index must be an int64 (or int32) tensor, got ", index.scalar_type());
  TORCH_CHECK_VALUE(index.dim() == 2 && index.size(0) == nq && index.size(1) == nk,
                    "attention: bias_index must be (Nq, Nk) = (", nq, ", ", nk, "), got ", index.sizes());
  TORCH_CHECK_TYPE(index.device() == device, "attention: bias_index is on ", index.device(), " but q is on ", device);
  if (index.is_inference()) return widen_and_check(index, table_width);  // no version counter to key on
  const uint32_t version = index.unsafeGetTensorImpl()->version_counter().current_version();
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    for (auto it = cache.begin(); it != cache.end();) {
      if (it->tensor.expired()) {
        it = cache.erase(it);
        continue;
      }
      if (it->tensor._unsafe_get_target() == index.unsafeGetTensorImpl()) {
        if (it->version == version && it->table_width == table_width) return it->wide.defined() ? it->wide : index;
        cache.erase(it);
        break;
      }
      ++it;
    }
  }
  at::Tensor wide = widen_and_check(index, table_width);  // outside the lock: a device sync on a GPU
  std::lock_guard<std::mutex> lock(cache_mutex);
  if (cache.size() >= kEntries) cache.pop_front();
  cache.push_back({c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(index.getIntrusivePtr()),
                   version, table_width, wide.is_same(index) ? at::Tensor() : wide});
  return wide;
}

}  // namespace armour
