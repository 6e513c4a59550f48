// The Nyström / Performer kernel table for the ISA selected in isa_dispatch.cpp (bf16 dot products
// play no part in these fp32 kernels, so avx512bf16 runs the avx512 ones).
#include "kernels/linear_api.h"

namespace armour {

const LinearKernelTable& current_linear_kernels() {
  switch (current_isa()) {
    case Isa::avx512bf16:
    case Isa::avx512: return linear_kernels_avx512();
    case Isa::avx2: return linear_kernels_avx2();
    default: return linear_kernels_scalar();
  }
}

}  // namespace armour
