// Shared by the CPU attention kernels: one block of full-precision key / value rows against the G query
// heads that share a KV head. The fp32 cache reads every block this way, the KIVI cache its staged
// blocks; one loop keeps their summation order, and so their results, the same.
//
// With AVX2 (and D a multiple of 8, resp. 64) eight key rows are scored together: one accumulator per
// row over the head dimension, then one horizontal-add tree for all eight, instead of a horizontal sum
// per (row, head). Values accumulate into 64-wide register tiles. A row's result still depends only on
// its own query and context, never on which other rows run in the same call.
#pragma once
#include <cstdint>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TESSERA_DENSE_AVX2 1
#endif

#ifdef TESSERA_DENSE_AVX2
// [sum(a[0]), ..., sum(a[7])]
static inline __m256 hsum8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
#endif

// scores[g * ctx + j] = sc * (q_g . k_j) for the n rows k_j = k + j * stride, q_g = q + g * D
inline void dense_block_scores(const float* q, int64_t G, int64_t D, const float* k, int64_t stride, int64_t n,
                               float sc, float* scores, int64_t ctx) {
  int64_t j0 = 0;
#ifdef TESSERA_DENSE_AVX2
  if (D % 8 == 0) {
    const __m256 scale = _mm256_set1_ps(sc);
    for (; j0 + 8 <= n; j0 += 8) {
      const float* kj = k + j0 * stride;
      for (int64_t g = 0; g < G; ++g) {
        const float* qg = q + g * D;
        __m256 acc[8];
        for (int t = 0; t < 8; ++t) acc[t] = _mm256_setzero_ps();
        for (int64_t d = 0; d < D; d += 8) {
          const __m256 qd = _mm256_loadu_ps(qg + d);
          for (int t = 0; t < 8; ++t) acc[t] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kj + t * stride + d), acc[t]);
        }
        _mm256_storeu_ps(scores + g * ctx + j0, _mm256_mul_ps(hsum8(acc), scale));
      }
    }
  }
#endif
  for (int64_t j = j0; j < n; ++j) {
    const float* kj = k + j * stride;
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = q + g * D;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t d = 0; d < D; ++d) s += qg[d] * kj[d];
      scores[g * ctx + j] = s * sc;
    }
  }
}

// acc[g * D + d] += sum_j p[g * ctx + j] * v_j[d] for the n rows v_j = v + j * stride
inline void dense_block_values(const float* p, int64_t ctx, int64_t G, int64_t D, const float* v, int64_t stride,
                               int64_t n, float* acc) {
#ifdef TESSERA_DENSE_AVX2
  if (D % 64 == 0) {
    for (int64_t g = 0; g < G; ++g) {
      const float* pg = p + g * ctx;
      for (int64_t d0 = 0; d0 < D; d0 += 64) {
        float* a = acc + g * D + d0;
        __m256 r[8];
        for (int c = 0; c < 8; ++c) r[c] = _mm256_loadu_ps(a + 8 * c);
        for (int64_t j = 0; j < n; ++j) {
          const __m256 w = _mm256_set1_ps(pg[j]);
          const float* vj = v + j * stride + d0;
          for (int c = 0; c < 8; ++c) r[c] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vj + 8 * c), r[c]);
        }
        for (int c = 0; c < 8; ++c) _mm256_storeu_ps(a + 8 * c, r[c]);
      }
    }
    return;
  }
#endif
  for (int64_t j = 0; j < n; ++j) {
    const float* vj = v + j * stride;
    for (int64_t g = 0; g < G; ++g) {
      const float pj = p[g * ctx + j];
      float* a = acc + g * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] += pj * vj[d];
    }
  }
}
