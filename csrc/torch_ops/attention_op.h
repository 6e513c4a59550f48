// The typed handle of the dispatcher op armour_kernels::attention (schema in schemas.cpp), for C++
// code that calls the op: its autograd, and the eager Python binding (bindings.cpp).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace armour {

using AttentionSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                              const std::optional<at::Tensor>&,
                                                              const std::optional<at::Tensor>&,
                                                              const std::optional<at::Tensor>&, c10::string_view,
                                                              double, bool);

inline const c10::TypedOperatorHandle<AttentionSignature>& attention_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("armour_kernels::attention", "").typed<AttentionSignature>();
  return op;
}

}  // namespace armour
