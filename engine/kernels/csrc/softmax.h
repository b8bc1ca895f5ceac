// Shared by the CPU attention kernels: a vectorizable exp and the in-place softmax of one score row.
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

// s[0..n) <- softmax(s), with the max subtracted first so every exp argument is <= 0
inline void softmax_inplace(float* s, int64_t n) {
  float m = s[0];
  for (int64_t t = 1; t < n; ++t) m = std::max(m, s[t]);
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t t = 0; t < n; ++t) {
    const float e = exp_nonpositive(s[t] - m);
    s[t] = e;
    sum += e;
  }
  const float inv = 1.f / sum;
#pragma omp simd
  for (int64_t t = 0; t < n; ++t) s[t] *= inv;
}
