// The interface between the torch side of the extension and the ISA-specific kernels.
//
// Why this header exists: the kernels are compiled three times (scalar baseline, AVX2, AVX-512,
// see isa_*.cpp) and must never see a torch header. A torch header compiled under
// `#pragma GCC target("avx512f")` would emit AVX-512 copies of torch's inline functions; the
// linker keeps one copy of each inline function (ODR), possibly the AVX-512 one, which would
// then crash the baseline path on a CPU without AVX-512. So the kernels receive only plain
// data: raw pointers, element strides, and a parallel-for callback that the torch side
// implements with at::parallel_for.
#pragma once

#include <cstdint>

namespace armour {

enum class DType : int { f32 = 0, bf16 = 1, f64 = 2 };

// bf16 storage: the upper half of an IEEE float.
struct bf16_t {
  uint16_t bits;
};

// body(ctx, begin, end) over task indices [begin, end); tasks never share an output element.
using ParallelBody = void (*)(void* ctx, int64_t begin, int64_t end);
using ParallelFor = void (*)(int64_t n_tasks, void* ctx, ParallelBody body);

// A (B, N, H, D) tensor read through element strides.
struct Strided4 {
  const void* ptr = nullptr;
  int64_t sb = 0, sn = 0, sh = 0, sd = 0;
};

enum class BiasKind : int { none = 0, dense = 1, table = 2 };
enum class ValueSrc : int { q = 0, k = 1, v = 2 };

// Everything the attention forward and backward kernels need (launcher contract in docs/layouts.md).
struct AttentionArgs {
  DType dtype = DType::f32;       // q, k, v, dout, out, dq, dk, dv
  int64_t B = 0, H = 0, Nq = 0, Nk = 0, Dk = 0, Dv = 0;  // Dv: total value width
  Strided4 q, k;
  int n_parts = 0;                // the value is concat(parts) along the feature dim
  Strided4 part[2];
  int64_t part_width[2] = {0, 0};
  ValueSrc part_src[2] = {ValueSrc::v, ValueSrc::v};

  BiasKind bias_kind = BiasKind::none;
  DType bias_dtype = DType::f32;
  const void* bias = nullptr;     // dense: (B, H, Nq, Nk) strides; table: (H, R) via bias_sh, bias_sj
  int64_t bias_sb = 0, bias_sh = 0, bias_si = 0, bias_sj = 0;
  const int64_t* index = nullptr; // table: (Nq, Nk) int64
  int64_t index_si = 0, index_sj = 0, table_R = 0;

  double scale = 1.0;
  bool mask_diagonal = false;
  ParallelFor parallel_for = nullptr;

  // forward outputs: out (B, Nq, H, Dv) contiguous in dtype; lse (B, H, Nq) contiguous in the
  // accumulation type (float, double for f64).
  void* out = nullptr;
  void* lse = nullptr;

  // backward inputs / outputs
  Strided4 dout, o;
  const void* lse_in = nullptr;   // contiguous (B, H, Nq), accumulation type
  void* dq = nullptr;             // (B, Nq, H, Dk) contiguous, dtype
  void* dk = nullptr;             // (B, Nk, H, Dk) contiguous, dtype
  void* dv = nullptr;             // (B, Nk, H, dv_width) contiguous, dtype; null when no v part
  int64_t dv_width = 0;
  void* dbias = nullptr;          // dense: (B, H, Nq, Nk) contiguous, accumulation type
  void* dtable = nullptr;         // table: (B, H, R), accumulation type (caller sums over B:
                                  // one slice per (b, h) task keeps the backward race-free)
};

// y[r, c] = hardswish(y[r, c] + bias[c]) in place, rows of `cols` contiguous elements (ld apart).
struct EpilogueArgs {
  DType dtype = DType::f32;
  void* y = nullptr;
  int64_t rows = 0, cols = 0, ld = 0;
  const void* bias = nullptr;     // (cols,) contiguous in dtype, or null
  ParallelFor parallel_for = nullptr;
};

struct KernelTable {
  const char* name;
  void (*attention_forward)(const AttentionArgs&);
  void (*attention_backward)(const AttentionArgs&);
  void (*bias_hardswish)(const EpilogueArgs&);
};

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2, avx512bf16 = 3 };

// One table per compiled ISA (isa_scalar.cpp, isa_avx2.cpp, isa_avx512.cpp, isa_avx512bf16.cpp).
const KernelTable& kernels_scalar();
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
const KernelTable& kernels_avx512bf16();

// Defines kernels_<ISA>() from the namespace armour::<ISA>; used by each isa_*.cpp after its
// `#pragma GCC pop_options`, so the accessor itself is baseline code.
#define ARMOUR_DEFINE_KERNEL_TABLE(ISA)                                                              \
  const KernelTable& kernels_##ISA() {                                                               \
    static const KernelTable table{#ISA, &ISA::attention_forward, &ISA::attention_backward, &ISA::bias_hardswish}; \
    return table;                                                                                    \
  }

// isa_dispatch.cpp: what the CPU supports, what is selected (env ARMOUR_KERNELS_CPU_ISA forces it).
bool cpu_supports(Isa isa);
Isa best_isa();
Isa current_isa();
void set_current_isa(Isa isa);  // caller checks cpu_supports first
const KernelTable& current_kernels();
const char* isa_name(Isa isa);
bool parse_isa(const char* name, Isa* out);

}  // namespace armour
