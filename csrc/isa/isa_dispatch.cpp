// Run-time choice of the kernel dispatch: the ISA of the hand-written kernels (scalar < avx2 <
// avx512 < avx512bf16; avx512bf16 differs from avx512 only in bf16 attention) and the GEMMs the
// attention kernels use (GemmUse, kernel_api.h: hand-written, oneDNN's brgemm for the fp32
// products, or brgemm with AMX tiles for the bf16 products too). Named "avx512", "avx512+brgemm",
// "amx" (= avx512bf16 with AMX). The default is the best the CPU supports (CPUID via libgcc, which
// also checks that the OS saves the AVX / AVX-512 registers; for AMX, CPUID and XCR0 here and
// oneDNN's own check through attention/brgemm.cpp), or what set_current_isa picked
// (armour_kernels.cpu.use_isa / ARMOUR_KERNELS_CPU_ISA, handled on the Python side).
#include <cpuid.h>

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

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

bool cpu_supports(Isa isa, GemmUse gemm) {
  if (!cpu_supports(isa)) return false;
  switch (gemm) {
    case GemmUse::amx: return isa == Isa::avx512bf16 && cpu_has_amx_bf16() && torch_amx_brgemm();
    case GemmUse::brgemm: return isa >= Isa::avx2 && torch_brgemm_f32();
    default: return true;
  }
}

Isa best_isa() {
  static const Isa best = cpu_supports(Isa::avx512bf16) ? Isa::avx512bf16
                          : cpu_supports(Isa::avx512)   ? Isa::avx512
                          : cpu_supports(Isa::avx2)     ? Isa::avx2
                                                        : Isa::scalar;
  return best;
}

// The default GEMMs: brgemm wherever torch has it (it measured faster than the hand-written fp32
// micro-kernel on Sapphire Rapids, and AMX tiles beat every hand-written bf16 kernel), with AMX
// for bf16 where the CPU and oneDNN have it.
GemmUse best_gemm() {
  static const GemmUse best = cpu_supports(best_isa(), GemmUse::amx)      ? GemmUse::amx
                              : cpu_supports(best_isa(), GemmUse::brgemm) ? GemmUse::brgemm
                                                                          : GemmUse::native;
  return best;
}

// -1: not forced (the best); else isa · 4 + gemm.
static std::atomic<int> g_dispatch{-1};

Isa current_isa() {
  const int v = g_dispatch.load(std::memory_order_relaxed);
  return v < 0 ? best_isa() : static_cast<Isa>(v / 4);
}

GemmUse current_gemm() {
  const int v = g_dispatch.load(std::memory_order_relaxed);
  return v < 0 ? best_gemm() : static_cast<GemmUse>(v % 4);
}

void set_current_isa(Isa isa, GemmUse gemm) {
  g_dispatch.store(static_cast<int>(isa) * 4 + static_cast<int>(gemm), std::memory_order_relaxed);
}

const KernelTable& current_kernels() {
  switch (current_isa()) {
    case Isa::avx512bf16: return kernels_avx512bf16();
    case Isa::avx512: return kernels_avx512();
    case Isa::avx2: return kernels_avx2();
    default: return kernels_scalar();
  }
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512bf16: return "avx512bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

std::string dispatch_name(Isa isa, GemmUse gemm) {
  if (gemm == GemmUse::amx) return "amx";
  return std::string(isa_name(isa)) + (gemm == GemmUse::brgemm ? "+brgemm" : "");
}

bool parse_dispatch(const std::string& name, Isa* isa, GemmUse* gemm) {
  for (Isa i : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::avx512bf16}) {
    for (GemmUse g : {GemmUse::native, GemmUse::brgemm, GemmUse::amx}) {
      if (name == dispatch_name(i, g) && (g != GemmUse::amx || i == Isa::avx512bf16)) {
        *isa = i;
        *gemm = g;
        return true;
      }
    }
  }
  return false;
}

std::vector<std::string> supported_dispatch() {
  std::vector<std::string> names;
  for (Isa i : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::avx512bf16})
    for (GemmUse g : {GemmUse::native, GemmUse::brgemm, GemmUse::amx})
      if ((g != GemmUse::amx || i == Isa::avx512bf16) && cpu_supports(i, g)) names.push_back(dispatch_name(i, g));
  return names;
}

}  // namespace armour
