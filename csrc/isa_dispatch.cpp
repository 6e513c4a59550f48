// Run-time choice of the kernel ISA (scalar < avx2 < avx512 < avx512bf16 < amx; avx512bf16 differs
// from avx512 only in bf16 attention, amx runs the avx512bf16 kernels with oneDNN's brgemm on AMX
// tiles for the bf16 products): the best the CPU supports (CPUID via libgcc, which also checks that
// the OS saves the AVX / AVX-512 registers; for AMX, CPUID and XCR0 here and torch's own check in
// attention_gemm.cpp), or what set_current_isa picked (armour_kernels.cpu.use_isa /
// ARMOUR_KERNELS_CPU_ISA, handled on the Python side).
#include <cpuid.h>

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <cstring>

#include "kernels/kernel_api.h"

namespace armour {

namespace {

// AMX-BF16 and AMX-TILE in CPUID leaf 7, and the tile state enabled in XCR0 (bits 17, 18). Raw
// CPUID rather than __builtin_cpu_supports, which older compilers do not know these names for.
bool cpu_has_amx_bf16() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx >> 27 & 1u)) return false;  // OSXSAVE: xgetbv allowed
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  if (!(edx >> 22 & 1u) || !(edx >> 24 & 1u)) return false;
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo >> 17 & 1u) && (lo >> 18 & 1u);
}

}  // namespace

bool cpu_supports(Isa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case Isa::amx:
      return cpu_supports(Isa::avx512bf16) && cpu_has_amx_bf16() && torch_amx_brgemm();
    case Isa::avx512bf16:
      return cpu_supports(Isa::avx512) && __builtin_cpu_supports("avx512bf16");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx2");
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default:
      return true;
  }
}

Isa best_isa() {
  static const Isa best = cpu_supports(Isa::amx)          ? Isa::amx
                          : cpu_supports(Isa::avx512bf16) ? Isa::avx512bf16
                          : cpu_supports(Isa::avx512)   ? Isa::avx512
                          : cpu_supports(Isa::avx2)     ? Isa::avx2
                                                        : Isa::scalar;
  return best;
}

static std::atomic<int> g_isa{-1};

Isa current_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  return v < 0 ? best_isa() : static_cast<Isa>(v);
}

void set_current_isa(Isa isa) { g_isa.store(static_cast<int>(isa), std::memory_order_relaxed); }

const KernelTable& current_kernels() {
  switch (current_isa()) {
    case Isa::amx:
    case Isa::avx512bf16: return kernels_avx512bf16();
    case Isa::avx512: return kernels_avx512();
    case Isa::avx2: return kernels_avx2();
    default: return kernels_scalar();
  }
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::amx: return "amx";
    case Isa::avx512bf16: return "avx512bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

bool parse_isa(const char* name, Isa* out) {
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::avx512bf16, Isa::amx}) {
    if (std::strcmp(name, isa_name(isa)) == 0) {
      *out = isa;
      return true;
    }
  }
  return false;
}

}  // namespace armour
