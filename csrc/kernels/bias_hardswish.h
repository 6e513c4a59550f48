// The bias + Hardswish epilogue of the Linear + activation family (EpilogueArgs, kernel_api.h):
// y = hardswish(y + bias) in place, vectorised over rows of contiguous elements.
//
// Included inside namespace armour::<isa> by isa_<isa>.cpp after the ISA's vector headers.
#pragma once

#include "kernels/attention_common.h"  // load_as / store_as, min64

template <class S>
inline S hardswish(S x) {
  S t = x + S(3);
  t = t < S(0) ? S(0) : (t > S(6) ? S(6) : t);
  return x * t / S(6);
}

template <class T, class V>
void epilogue_rows(const EpilogueArgs& e, int64_t r0, int64_t r1) {
  using S = typename V::S;
  constexpr int W = V::W;
  T* y = static_cast<T*>(e.y);
  const T* bias = static_cast<const T*>(e.bias);
  const V three = V::set1(S(3)), six = V::set1(S(6)), zero = V::zero(), sixth = V::set1(S(1) / S(6));
  for (int64_t r = r0; r < r1; ++r) {
    T* row = y + r * e.ld;
    int64_t c = 0;
    if constexpr (sizeof(T) == sizeof(S)) {  // float / double rows: vectorised in place
      for (; c + W <= e.cols; c += W) {
        V x = V::load(reinterpret_cast<S*>(row) + c);
        if (bias) x = x + V::load(reinterpret_cast<const S*>(bias) + c);
        V t = vmin(six, vmax(zero, x + three));
        (x * t * sixth).store(reinterpret_cast<S*>(row) + c);
      }
    }
    for (; c < e.cols; ++c) {
      S x = load_as<S>(row + c);
      if (bias) x += load_as<S>(bias + c);
      store_as(row + c, hardswish(x));
    }
  }
}

template <class T, class V>
void epilogue_impl(const EpilogueArgs& e) {
  constexpr int64_t kRows = 16;
  e.parallel_for((e.rows + kRows - 1) / kRows, const_cast<EpilogueArgs*>(&e), [](void* ctx, int64_t begin, int64_t end) {
    const EpilogueArgs& args = *static_cast<const EpilogueArgs*>(ctx);
    epilogue_rows<T, V>(args, begin * kRows, min64(end * kRows, args.rows));
  });
}

inline void bias_hardswish(const EpilogueArgs& e) {
  switch (e.dtype) {
    case DType::bf16: return epilogue_impl<bf16_t, VecF>(e);
    case DType::f64: return epilogue_impl<double, VecD>(e);
    default: return epilogue_impl<float, VecF>(e);
  }
}
