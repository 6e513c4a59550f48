// A network's first convolution on the NCHW image (ImageConvArgs, kernel_api.h; docs/image_conv.md).
//
// Why a kernel of its own: LeViT's stem starts with a 3×3 stride-2 convolution of the 3-channel
// image. oneDNN wants that image channels-last first (a transposing copy) and then has 3 input
// channels to vectorise over; in a served LeViT-128S at batch 1 the two cost ~0.45 ms of a ~9 ms
// call (Sapphire Rapids, fp32, 1 thread), several times the arithmetic. Here the output channels
// are the vector lanes: each input value is broadcast once per tap and multiplied into kPix output
// pixels' accumulators, read from C·KH zero-padded fp32 copies of the input rows the output row
// needs (so the inner loop has no bounds checks and any input strides / dtype cost one pass).
// The accumulators start at the bias and go through the dense layer's epilogue (activation, cast
// to the output dtype) one output row at a time.
//
// Included inside namespace armour::<isa> by isa_<isa>.cpp after the ISA's vector headers and
// dense_epilogue.h.
#pragma once

namespace image_conv_detail {

// Output pixels × channel vectors per register block: each accumulator is one FMA chain, and a
// chain's next FMA waits for the last (4 cycles), so 2 FMAs per cycle need ≥ 8 chains. AVX-512: 16
// pixels × 1 vector (16 of the 32 registers), 1.6x faster than 8 pixels on Sapphire Rapids. AVX2 has
// 16 registers: 4 pixels × 2 vectors (16 channels), so each broadcast input value feeds two FMAs and
// nothing spills — 8 pixels × 1 vector kept one accumulator on the stack (GCC 12), a store-to-load
// round trip in its chain: LeViT's 224² → 112² 3 → 16 convolution + Hardswish 265 → 212 µs (AMD EPYC
// Zen 3, 1 thread, the two builds alternated five times; OpenVINO's node: 244 µs in its model).
constexpr int kCV = VecF::W == 8 ? 2 : 1;
constexpr int64_t kPix = VecF::W >= 16 ? 16 : VecF::W == 8 ? 4 : 8;
static_assert(16 % (kCV * VecF::W) == 0, "a block's channels must divide cout_pad's 16");

// Fill `rows` with the C·KH input rows output row oy reads, zero-padded: rows[(c·KH + ky)·Wp + i]
// = x[b, c, oy·s − p + ky, i − p]. RoundBf16: an fp32 image for a bf16 convolution, each value
// rounded to bf16 as it is read — the result is exactly that of the image cast to bf16 first, without
// the cast's pass over memory (a served model's input cast, folded into this op by the graph runner).
template <class T, bool RoundBf16 = false>
void padded_rows(const ImageConvArgs& a, int64_t b, int64_t oy, int64_t Wp, float* rows) {
  const T* x = static_cast<const T*>(a.x);
  for (int64_t c = 0; c < a.C; ++c)
    for (int64_t ky = 0; ky < a.KH; ++ky) {
      float* dst = rows + (c * a.KH + ky) * Wp;
      const int64_t iy = oy * a.stride - a.pad + ky;
      if (iy < 0 || iy >= a.H) {
        for (int64_t i = 0; i < Wp; ++i) dst[i] = 0.f;
        continue;
      }
      const T* src = x + b * a.sb + c * a.sc + iy * a.sh;
      const int64_t lo = Wp < a.pad ? Wp : a.pad, hi = Wp < a.pad + a.W ? Wp : a.pad + a.W;
      for (int64_t i = 0; i < lo; ++i) dst[i] = 0.f;
      int64_t i = lo;
      if (a.sw == 1)
        for (; i + VecF::W <= hi; i += VecF::W) {
          VecF v = dense_detail::vload(src + (i - a.pad));
          if constexpr (RoundBf16) {  // through the ISA's own bf16 conversion, there and back
            uint16_t bits[VecF::W];
            store_bf16(bits, v);
            v = load_bf16(bits);
          }
          v.store(dst + i);
        }
      for (; i < hi; ++i) {
        const float v = load_as<float>(src + (i - a.pad) * a.sw);
        dst[i] = RoundBf16 ? bf16_to_float(float_to_bf16(v)) : v;
      }
      for (int64_t i = hi; i < Wp; ++i) dst[i] = 0.f;
    }
}

// acc[p, co] for output pixels ox0 .. ox0 + NP − 1 and the kCV · W channels from co0: bias + Σ taps.
// S: the stride when known at compile time (the input offsets of the NP pixels are then constant
// displacements off one register instead of NP pointers), 0 for a run-time stride.
template <int NP, int S>
inline void pixels(const ImageConvArgs& a, const float* rows, int64_t Wp, int64_t ox0, int64_t co0, float* acc) {
  const int64_t stride = S > 0 ? S : a.stride;
  VecF sum[NP][kCV];
  for (int v = 0; v < kCV; ++v) {
    const VecF bias = VecF::load(a.bias + co0 + v * VecF::W);
    for (int p = 0; p < NP; ++p) sum[p][v] = bias;
  }
  const float* w = a.weight + co0;
  const int64_t taps_per_row = a.KW, n_rows = a.C * a.KH, ldw = a.cout_pad;
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* row = rows + r * Wp + ox0 * stride;
    for (int64_t kx = 0; kx < taps_per_row; ++kx, w += ldw) {
      VecF wv[kCV];
      for (int v = 0; v < kCV; ++v) wv[v] = VecF::load(w + v * VecF::W);
      const float* in = row + kx;
      for (int p = 0; p < NP; ++p) {
        const VecF x = VecF::set1(in[p * stride]);
        for (int v = 0; v < kCV; ++v) sum[p][v] = fmadd(x, wv[v], sum[p][v]);
      }
    }
  }
  for (int p = 0; p < NP; ++p)
    for (int v = 0; v < kCV; ++v) sum[p][v].store(acc + p * a.cout_pad + co0 + v * VecF::W);
}

// One output row's channels [co0, co0 + kCV · W) over all Wo pixels, in register blocks of kPix, 4, 1.
template <int S>
void row_pixels(const ImageConvArgs& a, const float* rows, int64_t Wp, int64_t co0, float* acc) {
  int64_t ox = 0;
  for (; ox + kPix <= a.Wo; ox += kPix) pixels<kPix, S>(a, rows, Wp, ox, co0, acc + ox * a.cout_pad);
  for (; ox + 4 <= a.Wo; ox += 4) pixels<4, S>(a, rows, Wp, ox, co0, acc + ox * a.cout_pad);
  for (; ox < a.Wo; ++ox) pixels<1, S>(a, rows, Wp, ox, co0, acc + ox * a.cout_pad);
}

// T: x's element type (RoundBf16: fp32 x of a bf16 convolution); y's is a.dtype's.
template <class T, bool RoundBf16>
void chunk(const ImageConvArgs& a, int64_t chunk_index) {
  const int64_t rows_total = a.B * a.Ho;
  const int64_t begin = rows_total * chunk_index / a.n_chunks, end = rows_total * (chunk_index + 1) / a.n_chunks;
  const int64_t Wp = (a.Wo - 1) * a.stride + a.KW;
  float* rows = a.scratch + chunk_index * a.scratch_floats;
  float* acc = rows + a.C * a.KH * Wp;
  char* y = static_cast<char*>(a.y);
  const int64_t y_esize = a.dtype == DType::bf16 ? 2 : 4;
  constexpr int64_t Wv = kCV * VecF::W;  // channels per block (cout_pad, a multiple of 16, holds whole blocks)
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / a.Ho, oy = r % a.Ho;
    padded_rows<T, RoundBf16>(a, b, oy, Wp, rows);
    for (int64_t co0 = 0; co0 < a.Cout; co0 += Wv) {
      if (a.stride == 2) row_pixels<2>(a, rows, Wp, co0, acc);  // the stems of LeViT, ViT hybrids, ResNets
      else if (a.stride == 1) row_pixels<1>(a, rows, Wp, co0, acc);
      else row_pixels<0>(a, rows, Wp, co0, acc);
    }
    // The output row: Wo pixels of Cout channels; one long row for the epilogue when the
    // accumulators are as dense as y (Cout a multiple of 16), which saves its per-row work.
    const bool flat = a.cout_pad == a.Cout;
    DenseTile t;
    t.dtype = a.dtype;
    t.acc_dtype = DType::f32;
    t.acc = acc;
    t.ld_acc = a.cout_pad;
    t.rows = flat ? 1 : a.Wo;
    t.cols = flat ? a.Wo * a.Cout : a.Cout;
    t.y = y + r * a.Wo * a.Cout * y_esize;
    t.ld_y = a.Cout;
    t.act = a.act;
    dense_epilogue(t);
  }
}

template <class T, bool RoundBf16>
void chunks(void* ctx, int64_t begin, int64_t end) {
  const ImageConvArgs& a = *static_cast<const ImageConvArgs*>(ctx);
  for (int64_t c = begin; c < end; ++c) chunk<T, RoundBf16>(a, c);
}

}  // namespace image_conv_detail

inline void image_conv(const ImageConvArgs& a) {
  using namespace image_conv_detail;
  void* ctx = const_cast<ImageConvArgs*>(&a);
  const bool round = a.x_dtype == DType::f32 && a.dtype == DType::bf16;
  a.parallel_for(a.n_chunks, ctx, a.x_dtype == DType::bf16 ? &chunks<bf16_t, false>
                                  : round                   ? &chunks<float, true>
                                                            : &chunks<float, false>);
}
