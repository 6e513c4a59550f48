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

// GEMMs the torch side lends to the ISA kernels: oneDNN's batch-reduce GEMM micro-kernels
// (at::native::cpublas::brgemm; AMX tiles for bf16 on CPUs that have them). Why callbacks: the
// brgemm entry points are torch functions, which the ISA code must not see (see the top of this
// file), while the work around the GEMMs (packing, exp, conversions) is what decides the speed and
// belongs in the per-ISA code. So the ISA kernels run the whole algorithm and call these plain
// function pointers for the products; the torch side (attention/brgemm.cpp) fills them in when the
// CPU and the torch build have the micro-kernels and the ISA switch allows them. Null pointers: the
// kernels use their own hand-written micro-kernels.
//
// Every product is C (M×N, ldc, fp32) = or += A (M×K, lda) · B (K×N), row-major, lds in elements.
// bf16: A holds bf16 rows; B is in VNNI pairs, B[k / 2][n][k % 2] with ldb pairs per row; K even.
using GemmF32 = void (*)(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, bool add,
                         const float* A, const float* B, float* C);
using GemmBf16 = void (*)(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, bool add,
                          const uint16_t* A, const uint16_t* B, float* C);
struct GemmProvider {
  GemmF32 f32 = nullptr;
  GemmBf16 bf16 = nullptr;
  void (*release)() = nullptr;  // once per worker at the end of its parallel region (frees AMX state)
};

// How the kernels split the work: the queries of all (b, h) pairs, ordered (b, h, i), are cut into
// n_chunks contiguous runs of rows, one per task, so 1 and 2 threads are balanced at batch 1 (three
// (b, h) pairs for DeiT-Ti) as well as at batch 64. A (b, h) cut between two chunks has its key-side
// gradients summed by the caller's reduction (AttentionArgs::partial). Cut points are even query
// indices inside a (b, h), so the bf16 pair layouts never straddle two chunks.
inline int64_t attention_chunks(int64_t B, int64_t H, int64_t Nq, int64_t n_threads) {
  const int64_t rows = B * H * Nq;
  int64_t n = n_threads < 1 ? 1 : n_threads;
  const int64_t max_useful = (rows + 31) / 32;  // below ~32 rows a task costs more than it saves
  if (n > max_useful) n = max_useful;
  return n < 1 ? 1 : n;
}
// First flat row (b·H + h)·Nq + i of chunk c (c = n_chunks gives the end).
inline int64_t attention_chunk_start(int64_t c, int64_t n_chunks, int64_t B, int64_t H, int64_t Nq) {
  const int64_t rows = B * H * Nq;
  if (c >= n_chunks) return rows;
  const int64_t r = rows / n_chunks * c + rows % n_chunks * c / n_chunks;
  return r - (r % Nq) % 2;  // an even query index inside its (b, h)
}

// Everything the attention forward and backward kernels need (launcher contract: docs/layouts.md).
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
  GemmProvider gemm;              // brgemm callbacks, or all null (hand-written micro-kernels)
  int64_t n_chunks = 1;           // attention_chunks(B, H, Nq, threads): tasks of the parallel loop
  int64_t block_q = 64;           // query rows per tile (even)

  // forward outputs: out (B, Nq, H, Dv) contiguous in dtype; lse (B, H, Nq) contiguous in the
  // accumulation type (float, double for f64). A fully masked row (every score -inf, through the
  // bias; docs/numerics.md) gets out = 0 · value (0 unless a value row holds NaN or inf) and lse =
  // +inf, so the backward's exp(s - lse) is 0 for every key of it (no -inf - -inf) and, with finite
  // inputs, the row adds nothing to any gradient. A row with a NaN score gets out and lse NaN.
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
  void* dtable = nullptr;         // table: (n_chunks, H, Nq, Nk) zeroed, accumulation type: each
                                  // chunk sums its score gradients over the batch here (vector adds,
                                  // race-free); the caller sums the chunks and scatters the (H, Nq,
                                  // Nk) result into the (H, R) table once (index_add). With
  bool dtable_scatter = false;    // (when Nq·Nk is too large for that) (n_chunks, H, R) instead,
                                  // each score gradient added at its index.
  // (b, h) pairs cut between chunks: each chunk writes its share of dq (its rows), dkᵀ and the value
  // gradientᵀ into a slot here instead of the outputs, two slots per chunk (its first and its last
  // pair); after the parallel loop the backward sums the slots of each cut pair and stores it.
  // Slot layout (accumulation type): dq (Nq, Dk) | dkᵀ (Dk, Nk) | dvalueᵀ (Dv, Nk). Scratch the
  // caller allocates (no need to zero); null when n_chunks == 1.
  void* partial = nullptr;        // (2 · n_chunks, partial_size)
  int64_t partial_size = 0;       // Nq·Dk + Dk·Nk + Dv·Nk
};


// The activations of the dense layers, in the order of armour_kernels.constants.Activation.
enum class Act : int { none = 0, hardswish = 1, relu = 2, gelu = 3, gelu_tanh = 4, silu = 5 };

// The epilogue of a dense layer on one tile (docs/dense.md):
//   y[r, c] = act(acc[r, c] + bias[c]) + residual[r, c]
// acc: the GEMM's accumulators (fp32 from brgemm) or, in place, y itself (acc == y, acc_dtype ==
// dtype). y, bias and residual are in dtype; rows of `cols` contiguous elements, ld* apart. With
// no bias / residual / act it is a conversion: LeViT's input Hardswish uses it (act only) to write
// the activated GEMM operand.
struct DenseTile {
  DType dtype = DType::f32;
  DType acc_dtype = DType::f32;
  const void* acc = nullptr;
  int64_t ld_acc = 0;
  int64_t rows = 0, cols = 0;
  void* y = nullptr;
  int64_t ld_y = 0;
  const void* bias = nullptr;      // (cols,) or null
  const void* residual = nullptr;  // (rows, cols) ld_residual apart, or null
  int64_t ld_residual = 0;
  Act act = Act::none;
};

// One task of a dense layer for a task kernel of our own (docs/dense.md): rows [0, rows) of a row
// block times the packed weight's 64-column blocks [blk0, blk1); each output tile's epilogue (`out`:
// y, bias and residual at the row block's first row and column 0, their strides, act, dtype) runs
// on the tile's fp32 accumulators in `acc`.
//   dense_amx (kernels/dense_amx.h): bf16 on AMX tiles, a and b bf16 (b: (nb, K / 2, 64, 2) VNNI
//     blocks); kDenseAmxMinRows ≤ rows ≤ kDenseAmxMaxRows, K a multiple of kDenseAmxK; acc holds
//     2 × 32 × 32 floats.
//   dense_f32 (kernels/dense_f32.h): fp32 on the ISA's vectors (AVX2 and up), a fp32, b fp32 (nb, K, 64)
//     blocks, or with b_bf16 bf16 ones (widened as read; the output rounded to out.dtype as ever);
//     rows ≤ kDenseF32MaxRows; acc holds rows × 64 floats.
// The caller checks these ranges; the kernels do not check them again.
struct DenseTask {
  const void* a = nullptr;  // (rows, K), lda elements apart
  int64_t lda = 0;
  const void* b = nullptr;  // the packed weight
  int64_t K = 0, N = 0;     // N: y's columns (the last block may be partial)
  int64_t rows = 0, blk0 = 0, blk1 = 0;
  float* acc = nullptr;     // scratch
  bool b_bf16 = false;      // dense_f32: b holds bf16 blocks
  DenseTile out;            // acc / rows / cols are set per output tile
};
using DenseTaskFn = void (*)(const DenseTask&);
constexpr int64_t kDenseAmxK = 32;  // K must be a multiple of this (one tile product's reduction)
// The rows an AMX task may have: two row tiles, the second with at least one row (smaller row
// blocks stay on oneDNN's micro-kernel).
constexpr int64_t kDenseAmxMinRows = 17, kDenseAmxMaxRows = 32;
// On AVX-512 the fp32 task kernel serves layers of at most this many rows (one task's rows): batch-1
// layers, where the weight streams from L3 once per call and the kernel's prefetch of the weight
// ahead pays; taller layers stay on oneDNN's micro-kernel, level with it there. On AVX2 it serves
// every layer, row block by row block (linear_layer/dense.cpp, Problem::f32_task_tall).
constexpr int64_t kDenseF32MaxRows = 64;

// LayerNorm of each row of a (rows, cols) matrix, the dense layer's prologue (docs/dense.md):
//   y[r, :] = (x[r, :] − mean_r) / sqrt(var_r + eps) · weight + bias
// mean / biased variance in fp32 over the row; x, y, weight and bias (cols,) in dtype (fp32 or
// bf16), weight / bias null when absent; rows ld_x / ld_y elements apart, unit column stride.
struct RowNorm {
  DType dtype = DType::f32;
  const void* x = nullptr;
  int64_t ld_x = 0;
  int64_t rows = 0, cols = 0;
  const void* weight = nullptr;
  const void* bias = nullptr;
  float eps = 1e-5f;
  void* y = nullptr;
  int64_t ld_y = 0;
};

// A network's first convolution, read straight from the NCHW image (docs/image_conv.md):
//   y[b, oy, ox, co] = act(bias[co] + Σ_{c, ky, kx} w[c, ky, kx, co] · x[b, c, oy·s − p + ky, ox·s − p + kx])
// with zero padding. For few input channels (an RGB image), where a channels-last GEMM has nothing
// to vectorise over in the input channels; this one vectorises over the output channels instead.
// The work is cut into n_chunks contiguous runs of output rows (b, oy), one per task, each with its
// own fp32 scratch of scratch_floats (the padded input rows and one output row's accumulators).
struct ImageConvArgs {
  DType dtype = DType::f32;                 // y (and the weights the caller passed)
  DType x_dtype = DType::f32;               // x: dtype, or fp32 with a bf16 dtype (rounded to bf16 as read)
  int64_t B = 0, C = 0, H = 0, W = 0;       // x (B, C, H, W) read through element strides
  const void* x = nullptr;
  int64_t sb = 0, sc = 0, sh = 0, sw = 0;
  int64_t KH = 0, KW = 0, stride = 1, pad = 0, Ho = 0, Wo = 0, Cout = 0;
  int64_t cout_pad = 0;                     // Cout rounded up to a multiple of 16
  const float* weight = nullptr;            // (C·KH·KW, cout_pad) fp32, zero past Cout
  const float* bias = nullptr;              // (cout_pad) fp32, zero past Cout
  void* y = nullptr;                        // (B, Ho, Wo, Cout) contiguous, dtype
  Act act = Act::none;
  float* scratch = nullptr;                 // (n_chunks, scratch_floats)
  int64_t scratch_floats = 0;
  int64_t n_chunks = 1;
  ParallelFor parallel_for = nullptr;
};

// Scratch floats per task of image_conv: C·KH padded input rows of (Wo − 1)·stride + KW values,
// and Wo × cout_pad accumulators.
inline int64_t image_conv_scratch(int64_t C, int64_t KH, int64_t KW, int64_t stride, int64_t Wo, int64_t cout_pad) {
  return C * KH * ((Wo - 1) * stride + KW) + Wo * cout_pad;
}

struct KernelTable {
  const char* name;
  void (*attention_forward)(const AttentionArgs&);
  void (*attention_backward)(const AttentionArgs&);
  void (*dense_epilogue)(const DenseTile&);
  void (*image_conv)(const ImageConvArgs&);
  void (*layer_norm_rows)(const RowNorm&);
  DenseTaskFn dense_amx;  // null unless compiled with AMX (avx512bf16); the torch side asks for AMX first
  DenseTaskFn dense_f32;  // null on the scalar path
};

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2, avx512bf16 = 3 };

// The GEMMs of the attention kernels (GemmProvider): the hand-written micro-kernels only; oneDNN's
// brgemm for the fp32 products; or, with avx512bf16 on a CPU with AMX, brgemm for the bf16
// products too (AMX tiles). Not a separate compiled table: the same kernels, other callbacks.
enum class GemmUse : int { native = 0, brgemm = 1, amx = 2 };

// One table per compiled ISA (isa_scalar.cpp, isa_avx2.cpp, isa_avx512.cpp, isa_avx512bf16.cpp).
const KernelTable& kernels_scalar();
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
const KernelTable& kernels_avx512bf16();

// Defines kernels_<ISA>() from the namespace armour::<ISA>; used by each isa_*.cpp after its
// `#pragma GCC pop_options`, so the accessor itself is baseline code.
#define ARMOUR_DEFINE_KERNEL_TABLE(ISA)                                                              \
  const KernelTable& kernels_##ISA() {                                                               \
    static const KernelTable table{#ISA, &ISA::attention_forward, &ISA::attention_backward,          \
                                   &ISA::dense_epilogue, &ISA::image_conv,                            \
                                   &ISA::layer_norm_rows, ISA::dense_amx, ISA::dense_f32};          \
    return table;                                                                                    \
  }

// isa_dispatch.cpp: what the CPU supports, what is selected (env ARMOUR_KERNELS_CPU_ISA forces it).
bool cpu_supports(Isa isa);
bool cpu_supports(Isa isa, GemmUse gemm);
Isa best_isa();
GemmUse best_gemm();  // the GEMMs used unless set_current_isa chose others
Isa current_isa();
GemmUse current_gemm();
void set_current_isa(Isa isa, GemmUse gemm);  // caller checks cpu_supports first
const KernelTable& current_kernels();
const char* isa_name(Isa isa);

// attention/brgemm.cpp (torch side): whether this torch build has the fp32 brgemm, and the bf16 one
// that oneDNN runs on AMX tiles here; the GEMM callbacks a call gets under the current dispatch.
bool torch_brgemm_f32();
bool torch_amx_brgemm();
GemmProvider attention_gemm(DType dtype);

}  // namespace armour
