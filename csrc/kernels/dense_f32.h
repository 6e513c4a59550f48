// The fp32 dense layer's task (DenseTask, kernel_api.h) on the ISA's float vectors, for layers of at
// most kDenseF32MaxRows rows: LeViT's stages at batch 1 (49 and 16 rows per image), classifier heads.
// The weight is fp32 blocks, or (b_bf16: the bf16-fp32-brgemm layout, CPUs without AVX-512) bf16
// blocks widened to fp32 as they are loaded: half the bytes streamed, the same products.
//
// Why not oneDNN's brgemm micro-kernel, as for taller layers: at these row counts the layer is
// bound by streaming its weight from L3 or memory (a LeViT-128S fp32 call reads ~30 MB of weights,
// about an L3's worth, and a 16-row layer does only 32 flops per weight element), and oneDNN's
// kernel, called once per (rows × 64) output tile (on AVX2 once per 16 columns of it), leaves the
// weight to the hardware prefetcher, whose stream restarts at every call. Here the task's weight is
// one stream: while one chunk is multiplied, the chunk kAheadChunks further on (across block
// boundaries) is prefetched into L2, its lines spread evenly over the chunk's passes so that the
// loads run beside the FMAs instead of in bursts.
//   Measured on Sapphire Rapids (AVX-512), 1 thread, weights cold in L2: a 16-row 384 → 768 layer
// 84 µs against 106 µs on oneDNN's per-tile calls; prefetching a whole block ahead, or four lines
// per step in the first pass only, gained about half of that. On an AMD EPYC Zen 3 (AVX2) inside a
// served LeViT-128S: see docs/dense.md, "The fp32 task kernel".
//
// Register blocking: a pass is up to 6 rows × kPassVecs vectors of a block's 64 columns — 6 × 4 zmm
// (24 of 32 registers) on AVX-512, 6 × 2 ymm (12 of 16) on AVX2, so a 64-column block is kGroups
// passes wide there — plus one register per weight vector and one for the broadcast row value. The
// rows of a task split into row passes as even as they go (16 rows: 6 + 5 + 5). The reduction runs
// in chunks of kKChunk steps so that every row pass after the first reads its 16 KB of the chunk
// from L1 (AVX-512: 64 steps of the block; AVX2: 256 steps, one 16-column group at a time); the
// accumulators go to `acc` between chunks.
//
// Included inside namespace armour::<isa> by the AVX-512 and AVX2 ISA files after dense_epilogue.h.
#pragma once

namespace dense_f32_detail {

// Raw registers in the passes, not VecF: GCC keeps an array of the wrapper on the stack around the
// loop. The wrapper's functions, inlined, give the instructions.
using Reg = decltype(VecF::v);

constexpr int64_t kBlock = 64;                       // weight block width (columns per output tile)
constexpr int kVecs = kBlock / VecF::W;              // vectors per weight row: 4 (AVX-512), 8 (AVX2)
constexpr int kPassVecs = VecF::W >= 16 ? 4 : 2;     // vectors per pass row (the register budget above)
constexpr int kGroups = kVecs / kPassVecs;           // passes across one block: 1 (AVX-512), 4 (AVX2)
constexpr int64_t kGroupCols = kPassVecs * VecF::W;  // columns per pass
constexpr int kMaxPassRows = 6;
// Reduction steps per chunk: 64 (16 KB of a block, in L1 for the row passes after the first); a block
// kGroups passes wide reads 1 / kGroups of each step's lines per pass, so its chunks are kGroups times
// as long for the same 16 KB per group panel (a pass's setup then costs a quarter as much per step).
constexpr int64_t kKChunk = 64 * kGroups;
constexpr int64_t kLine = 64;                        // bytes per cache line
// Weight lines per reduction step: 4 for fp32 weights, 2 for bf16 ones.
template <class B>
constexpr int kLinesPerStep = kBlock * sizeof(B) / kLine;
static_assert(kVecs % kPassVecs == 0, "dense_f32: a block is a whole number of passes wide");
// More passes per chunk than lines per step (a block several passes wide): each pass prefetches one
// line every few steps rather than whole lines every step.
constexpr bool kSpread = kGroups > 1;
// Prefetch distance: 2 chunks (32 KB) of the task's weight; 1 chunk (64 KB) for a block kGroups passes wide.
constexpr int64_t kAheadChunks = kSpread ? 1 : 2;

// The weight lines a pass prefetches into L2 from `line` up to `end`: `per` lines every step, or
// (kSpread) one line every `every` steps, from the pass's first step.
struct Stream {
  const char* line = nullptr;
  const char* end = nullptr;
  int per = 0;
  int every = 1;
};

// A weight vector: fp32, or bf16 bits widened (exact: a bf16 value is the float's upper half).
inline Reg load_weight(const float* p) { return VecF::load(p).v; }
inline Reg load_weight(const uint16_t* p) { return load_bf16(p).v; }

// One reduction step k of a pass: c[r][:] += a[r, k] · b[k, :] for rows [0, R).
template <int R, class B>
inline void step(Reg (&c)[R][kPassVecs], const float* a, int64_t lda, const B* b, int64_t k) {
  const B* bk = b + k * kBlock;
  Reg w[kPassVecs];
  for (int j = 0; j < kPassVecs; ++j) w[j] = load_weight(bk + j * VecF::W);
  for (int r = 0; r < R; ++r) {
    const VecF x = VecF::set1(a[r * lda + k]);
    for (int j = 0; j < kPassVecs; ++j) c[r][j] = fmadd(x, VecF{w[j]}, VecF{c[r][j]}).v;
  }
}

// Rows [0, R) × kGroupCols columns of a block over reduction steps [k0, k1): acc (ld kBlock) += a · b,
// or = when `first`, b and acc at the pass's first column; prefetching `next`'s lines on the way.
template <int R, class B>
inline void pass(const float* a, int64_t lda, const B* b, int64_t k0, int64_t k1, float* acc, bool first,
                 Stream next) {
  Reg c[R][kPassVecs];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kPassVecs; ++j)
      c[r][j] = first ? VecF::zero().v : VecF::load(acc + r * kBlock + j * VecF::W).v;
  if constexpr (kSpread) {
    // One line every `every` steps, unrolled by two (on an AMD EPYC Zen 3, 1 thread: 16-row layers
    // ~5% faster with their weight hot, 49 rows level with oneDNN's kernel instead of 4% behind).
    int wait = 1;
#pragma GCC unroll 2
    for (int64_t k = k0; k < k1; ++k) {
      if (next.line < next.end && --wait == 0) {
        _mm_prefetch(next.line, _MM_HINT_T1);
        next.line += kLine;
        wait = next.every;
      }
      step<R, B>(c, a, lda, b, k);
    }
  } else {  // `per` lines each step: the loop as measured on AVX-512
    for (int64_t k = k0; k < k1; ++k) {
      if (next.line < next.end) {
        for (int l = 0; l < next.per; ++l) _mm_prefetch(next.line + l * kLine, _MM_HINT_T1);
        next.line += next.per * kLine;
      }
      step<R, B>(c, a, lda, b, k);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kPassVecs; ++j) VecF{c[r][j]}.store(acc + r * kBlock + j * VecF::W);
}

template <class B>
inline void pass_rows(int rows, const float* a, int64_t lda, const B* b, int64_t k0, int64_t k1, float* acc,
                      bool first, Stream next) {
  switch (rows) {
    case 1: return pass<1, B>(a, lda, b, k0, k1, acc, first, next);
    case 2: return pass<2, B>(a, lda, b, k0, k1, acc, first, next);
    case 3: return pass<3, B>(a, lda, b, k0, k1, acc, first, next);
    case 4: return pass<4, B>(a, lda, b, k0, k1, acc, first, next);
    case 5: return pass<5, B>(a, lda, b, k0, k1, acc, first, next);
    default: return pass<6, B>(a, lda, b, k0, k1, acc, first, next);
  }
}

// One output tile's accumulators: task.rows × 64 of weight block `b` into acc, prefetching the
// task's weight `ahead` bytes past each chunk (up to `end`).
template <class B>
inline void block(const DenseTask& task, const float* a, const B* b, float* acc, int64_t ahead, const char* end) {
  const int64_t row_passes = (task.rows + kMaxPassRows - 1) / kMaxPassRows;
  const int64_t passes = row_passes * kGroups;
  // The chunk's lines shared by its passes: `per` lines a step (4 for one pass on AVX-512; the
  // first passes cover the chunk), or one line every `every` steps (16 rows on AVX2: 12 passes, a line
  // every 3 steps).
  Stream stream;
  constexpr int lines = kLinesPerStep<B>;
  stream.per = kSpread ? 1 : static_cast<int>((lines + passes - 1) / passes);
  stream.every = kSpread && passes > lines ? static_cast<int>(passes / lines) : 1;
  for (int64_t k0 = 0; k0 < task.K; k0 += kKChunk) {
    const int64_t k1 = k0 + kKChunk < task.K ? k0 + kKChunk : task.K;
    stream.line = reinterpret_cast<const char*>(b + k0 * kBlock) + ahead;
    stream.end = reinterpret_cast<const char*>(b + k1 * kBlock) + ahead;
    if (stream.end > end) stream.end = end;
    const int64_t pass_lines = (k1 - k0 + stream.every - 1) / stream.every * stream.per;  // what one pass prefetches
    for (int g = 0; g < kGroups; ++g) {  // a group's column panel of the chunk stays in L1 for its row passes
      for (int64_t q = 0, m0 = 0; q < row_passes; ++q) {
        const int64_t left = task.rows - m0, rows = (left + row_passes - q - 1) / (row_passes - q);
        pass_rows(static_cast<int>(rows), a + m0 * task.lda, task.lda, b + g * kGroupCols, k0, k1,
                  acc + m0 * kBlock + g * kGroupCols, k0 == 0, stream);
        stream.line += pass_lines * kLine;
        m0 += rows;
      }
    }
  }
}

template <class B>
inline void run(const DenseTask& task) {
  const float* a = static_cast<const float*>(task.a);
  const B* b = static_cast<const B*>(task.b);
  const char* end = reinterpret_cast<const char*>(b + task.blk1 * task.K * kBlock);
  const int64_t ahead = kAheadChunks * kKChunk * kBlock * sizeof(B);
  for (int64_t blk = task.blk0; blk < task.blk1; ++blk) {
    const B* bblk = b + blk * task.K * kBlock;
    block(task, a, bblk, task.acc, ahead, end);
    dense_epilogue(task_tile(task, task.acc, kBlock, blk * kBlock, kBlock));
  }
}

}  // namespace dense_f32_detail

// task.rows ≤ kDenseF32MaxRows: the caller's rule (linear_layer/dense.cpp, task_blocks).
// task.b_bf16: the weight in bf16 blocks (the bf16-fp32-brgemm layout), widened as it is read.
inline void dense_f32(const DenseTask& task) {
  if (task.b_bf16)
    dense_f32_detail::run<uint16_t>(task);
  else
    dense_f32_detail::run<float>(task);
}
