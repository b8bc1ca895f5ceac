// The micro-kernel of the CPU panel GEMMs (panel_linear.cpp): MR rows of A against T 16-column panels of a
// weight packed as [panels, K, 16], accumulated in MR x T zmm registers, then handed to the caller's
// epilogue (a plain store, or the gated-MLP activation). Every output element is one FMA chain over k =
// 0..K-1 in order, started from zero, whatever MR and T are, so a row's result never depends on how the
// rows were batched or tiled.
#pragma once
#include <algorithm>
#include <cstdint>

#include "tile_prefetch.h"

constexpr int64_t kPanel = 16;  // output columns per panel: one zmm of fp32
// affine4_codec.h's 4-bit code: one (d, m) per 32 input features, records of 16 columns x 32 features
constexpr int64_t kAffineBlock = 32;
constexpr int64_t kAffineRecord = 2 * kPanel * 4 + kPanel * kAffineBlock / 2;  // 384 bytes

#if defined(__AVX512F__)
#include <immintrin.h>
#define TESSERA_PANEL_AVX512 1

// The input rows a tile reads, a(r, k). RowMajorA: rows of a [M, K] matrix with row stride lda.
// Packed16A: rows packed k-major by 16 ([K][16], pack_rows16), so that a 16-row tile addresses all its
// rows from one register (16 row pointers left the compiler short of general registers, spilling in the
// k loop).
struct RowMajorA {
  const float* p;
  int64_t lda;
  float operator()(int r, int64_t k) const { return p[r * lda + k]; }
  RowMajorA rows_from(int64_t m) const { return {p + m * lda, lda}; }
};

struct Packed16A {
  const float* p;
  int64_t K;
  float operator()(int r, int64_t k) const { return p[k * 16 + r]; }
  Packed16A rows_from(int64_t m) const { return {p + m * K, K}; }  // m a multiple of 16
};

// x [M, K] (row stride lda) -> dst [ceil(M/16)][K][16], rows past M zero
inline void pack_rows16(const float* x, int64_t lda, int64_t M, int64_t K, float* dst) {
  const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(static_cast<int>(lda)));
  for (int64_t m = 0; m < M; m += 16, dst += K * 16) {
    const int64_t mr = std::min<int64_t>(16, M - m);
    const __mmask16 valid = static_cast<__mmask16>((1u << mr) - 1u);
    const float* base = x + m * lda;
    for (int64_t k = 0; k < K; ++k)
      _mm512_storeu_ps(dst + k * 16, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, rows, base + k, 4));
  }
}

// acc[r][t][j] = sum_k a(r, k) * W[t][k][j], panels t at W + t * K * 16; meanwhile `pf` fetches the
// caller's next weights (tile_prefetch.h), which changes no result
template <int MR, int T, class AOp>
__attribute__((always_inline)) inline void panel_accumulate(const AOp& a, const float* W, int64_t K,
                                                            __m512 (&acc)[MR][T], PrefetchSpread pf = {}) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for_each_k(K, pf, [&](int64_t k) __attribute__((always_inline)) {
    __m512 w[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) w[t] = _mm512_loadu_ps(W + t * K * kPanel + k * kPanel);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 x = _mm512_set1_ps(a(r, k));
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(x, w[t], acc[r][t]);
    }
  });
}

// The same sums with the weights held in affine4_codec.h's 4-bit code: T panels' records at P + t * stride,
// decoded in registers two input features at a time (one byte holds both codes), each to the exact fp32
// value the fp32 panels hold, so every acc[r][t][j] is the same FMA chain. `pf` is spread over K / 2 steps.
struct Affine4Weights {
  const uint8_t* P;
  int64_t stride;  // bytes from one panel's records to the next's
};

// The 16 columns' weights at input features 2j and 2j + 1 of one record (d, m: its scales and offsets):
// each code q put under the exponent of 2^23 (the float 2^23 + q), 2^23 subtracted exactly, then
// fma(d, q, m), the one rounding the code was verified against. Also what unpack decodes with.
struct Affine4Decoder {
  __m512i low = _mm512_set1_epi32(15), magic = _mm512_set1_epi32(0x4B000000);
  __m512 two23 = _mm512_set1_ps(8388608.f);

  inline void pair(const uint8_t* record, int j, __m512 d, __m512 m, __m512& w0, __m512& w1) const {
    const uint8_t* codes = record + 8 * kPanel + j * kPanel;
    const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
    const __m512 f0 = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(c, low, magic, 0xEA));  // (c & low) | magic
    const __m512 f1 = _mm512_castsi512_ps(_mm512_or_si512(_mm512_srli_epi32(c, 4), magic));
    w0 = _mm512_fmadd_ps(d, _mm512_sub_ps(f0, two23), m);
    w1 = _mm512_fmadd_ps(d, _mm512_sub_ps(f1, two23), m);
  }
};

template <int MR, int T, class AOp>
__attribute__((always_inline)) inline void panel_accumulate(const AOp& a, Affine4Weights W, int64_t K,
                                                            __m512 (&acc)[MR][T], PrefetchSpread pf = {}) {
  constexpr int64_t kBlock = kAffineBlock, kRecord = kAffineRecord;
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  const Affine4Decoder dec;
  // one block of 32 input features, `step` once per pair of them
  auto block = [&](int64_t b, auto&& step) __attribute__((always_inline)) {
    __m512 d[T], m[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const float* dm = reinterpret_cast<const float*>(W.P + t * W.stride + b * kRecord);
      d[t] = _mm512_loadu_ps(dm);
      m[t] = _mm512_loadu_ps(dm + kPanel);
    }
    const int64_t k0 = b * kBlock;
    for (int j = 0; j < kBlock / 2; ++j) {
      step();
      __m512 w0[T], w1[T];
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) dec.pair(W.P + t * W.stride + b * kRecord, j, d[t], m[t], w0[t], w1[t]);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const __m512 x = _mm512_set1_ps(a(r, k0 + 2 * j));
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(x, w0[t], acc[r][t]);
      }
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const __m512 x = _mm512_set1_ps(a(r, k0 + 2 * j + 1));
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(x, w1[t], acc[r][t]);
      }
    }
  };
  // as for_each_k: no prefetch code in the loop when there is nothing to fetch
  if (!pf.rate) {
    for (int64_t b = 0; b < K / kBlock; ++b) block(b, [] {});
  } else {
    for (int64_t b = 0; b < K / kBlock; ++b) block(b, [&] { pf.step(); });
  }
  pf.finish();
}

// mr (1..MAXR) rows of `a` against W (fp32 panels or an Affine4Weights): accumulate, then
// epi.template store<MR>(acc) with MR = mr
template <int MAXR, int T, class AOp, class Weights, class Epilogue>
__attribute__((always_inline)) inline void panel_rows(int mr, const AOp& a, Weights W, int64_t K, Epilogue& epi,
                                                      PrefetchSpread pf = {}) {
  static_assert(MAXR >= 1 && MAXR <= 16, "1 to 16 rows per tile");
#define TESSERA_PANEL_CASE(R)                          \
  case R:                                              \
    if constexpr (R <= MAXR) {                         \
      __m512 acc[R][T];                                \
      panel_accumulate<R, T>(a, W, K, acc, pf);        \
      epi.template store<R>(acc);                      \
    }                                                  \
    break;
  switch (mr) {
    TESSERA_PANEL_CASE(1)
    TESSERA_PANEL_CASE(2)
    TESSERA_PANEL_CASE(3)
    TESSERA_PANEL_CASE(4)
    TESSERA_PANEL_CASE(5)
    TESSERA_PANEL_CASE(6)
    TESSERA_PANEL_CASE(7)
    TESSERA_PANEL_CASE(8)
    TESSERA_PANEL_CASE(9)
    TESSERA_PANEL_CASE(10)
    TESSERA_PANEL_CASE(11)
    TESSERA_PANEL_CASE(12)
    TESSERA_PANEL_CASE(13)
    TESSERA_PANEL_CASE(14)
    TESSERA_PANEL_CASE(15)
    TESSERA_PANEL_CASE(16)
    default: break;
  }
#undef TESSERA_PANEL_CASE
}
#endif
