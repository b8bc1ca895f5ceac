// The micro-kernel of the CPU panel GEMMs (panel_linear.cpp): MR rows of A against T 16-column panels of a
// weight packed as [panels, K, 16], accumulated in MR x T zmm registers, then handed to the caller's
// epilogue (a plain store, or the gated-MLP activation). Every output element is one FMA chain over k =
// 0..K-1 in order, started from zero, whatever MR and T are, so a row's result never depends on how the
// rows were batched or tiled.
#pragma once
#include <cstdint>

#include "tile_prefetch.h"

constexpr int64_t kPanel = 16;  // output columns per panel: one zmm of fp32

#if defined(__AVX512F__)
#include <immintrin.h>
#define TESSERA_PANEL_AVX512 1

// acc[r][t][j] = sum_k A[r * lda + k] * W[t][k][j], panels t at W + t * K * 16; meanwhile `pf` fetches
// the caller's next weights (tile_prefetch.h), which changes no result
template <int MR, int T>
inline void panel_accumulate(const float* A, int64_t lda, const float* W, int64_t K, __m512 (&acc)[MR][T],
                             PrefetchSpread pf = {}) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for_each_k(K, pf, [&](int64_t k) __attribute__((always_inline)) {
    __m512 w[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) w[t] = _mm512_loadu_ps(W + t * K * kPanel + k * kPanel);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k]);
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(a, w[t], acc[r][t]);
    }
  });
}

// mr (1..MAXR) rows: accumulate, then epi.template store<MR>(acc) with MR = mr
template <int MAXR, int T, class Epilogue>
inline void panel_rows(int mr, const float* A, int64_t lda, const float* W, int64_t K, Epilogue& epi,
                       PrefetchSpread pf = {}) {
  static_assert(MAXR >= 1 && MAXR <= 8, "1 to 8 rows per tile");
#define TESSERA_PANEL_CASE(R)                          \
  case R:                                              \
    if constexpr (R <= MAXR) {                         \
      __m512 acc[R][T];                                \
      panel_accumulate<R, T>(A, lda, W, K, acc, pf);           \
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
    default: break;
  }
#undef TESSERA_PANEL_CASE
}
#endif
