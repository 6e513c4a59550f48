// The C++ kernels of the Nyström and Performer ops for CPU tensors (linear_attention/nystrom.cpp,
// linear_attention/performer.cpp; schemas in schemas.cpp).
#include <torch/library.h>

#include "linear_attention/ops.h"

TORCH_LIBRARY_IMPL(armour_kernels, CPU, m) {
  m.impl("nystrom_fwd", TORCH_FN(armour::nystrom_fwd_cpu));
  m.impl("nystrom_bwd", TORCH_FN(armour::nystrom_bwd_cpu));
  m.impl("performer_fwd", TORCH_FN(armour::performer_fwd_cpu));
  m.impl("performer_bwd", TORCH_FN(armour::performer_bwd_cpu));
}
