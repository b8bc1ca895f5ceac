// Shared by the CPU attention kernels: one block of full-precision key / value rows against the G query
// heads that share a KV head. The fp32 cache reads every block this way, the KIVI cache its staged
// blocks; one loop keeps their summation order, and so their results, the same.
#pragma once
#include <cstdint>

// scores[g * ctx + j] = sc * (q_g . k_j) for the n rows k_j = k + j * stride, q_g = q + g * D
inline void dense_block_scores(const float* q, int64_t G, int64_t D, const float* k, int64_t stride, int64_t n,
                               float sc, float* scores, int64_t ctx) {
  for (int64_t j = 0; j < n; ++j) {
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
