// Shared by the CPU kernels: a vectorizable exp (scalar and 8-lane) and the in-place softmax of one
// score row.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// exp for x <= 0 (scores minus their max), written as plain arithmetic so the compiler vectorizes
// the softmax loop; libm's scalar expf was most of this kernel's time. Cephes' expf polynomial:
// relative error ~2e-7, on a par with the fp32 rounding of the scores themselves.
inline float exp_nonpositive(float x) {
  x = x < -87.3f ? -87.3f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
// exp_nonpositive on 8 lanes, the same polynomial
inline __m256 exp_nonpositive8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                                 _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
  r = _mm256_add_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(2.12194440e-4f)));
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
}
#endif

// s[0..n) <- softmax(s), with the max subtracted first so every exp argument is <= 0. The exp runs 8
// lanes at a time where AVX2 is there: written as one scalar loop, the compiler kept it scalar, and it
// was a third of the decode attention kernel's time. A row's result depends only on the row (its
// length fixes which entries take the 8-lane path), never on the rows computed beside it.
inline void softmax_inplace(float* s, int64_t n) {
  int64_t t = 0;
  float m = s[0];
#if defined(__AVX2__) && defined(__FMA__)
  if (n >= 8) {
    __m256 vm = _mm256_loadu_ps(s);
    for (t = 8; t + 8 <= n; t += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + t));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, vm);
    for (int i = 0; i < 8; ++i) m = std::max(m, lanes[i]);
  }
#endif
  for (; t < n; ++t) m = std::max(m, s[t]);
  float sum = 0.f;
  t = 0;
#if defined(__AVX2__) && defined(__FMA__)
  {
    const __m256 vmax = _mm256_set1_ps(m);
    __m256 vsum = _mm256_setzero_ps();
    for (; t + 8 <= n; t += 8) {
      const __m256 e = exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(s + t), vmax));
      _mm256_storeu_ps(s + t, e);
      vsum = _mm256_add_ps(vsum, e);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, vsum);
    for (int i = 0; i < 8; ++i) sum += lanes[i];
  }
#endif
  for (; t < n; ++t) {
    const float e = exp_nonpositive(s[t] - m);
    s[t] = e;
    sum += e;
  }
  const float inv = 1.f / sum;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) s[i] *= inv;
}
