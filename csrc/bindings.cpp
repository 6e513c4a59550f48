// Python bindings of armour_kernels._C. Each kernel family registers its functions here.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "armour_kernels CPU kernels (AVX2 / AVX-512)";
}
