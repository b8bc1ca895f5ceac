// SiLU-and-multiply on 8 lanes, shared by the elementwise kernel (elementwise.cpp) and the gated-MLP GEMM
// epilogue (panel_linear.cpp), so both give the same bits. Include it where fp-contract is off: the
// products must be rounded before the adds, as the reference's separate kernels round them.
#pragma once
#include "softmax.h"  // exp_nonpositive8

#if defined(__AVX2__) && defined(__FMA__)
// silu(g) * u = g / (1 + e^-g) * u, with e^-|g| so the exp never overflows:
// g >= 0: g / (1 + e^-g); g < 0: g e^g / (1 + e^g)
inline __m256 silu_mul8(__m256 g, __m256 u) {
  const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
  const __m256 e = exp_nonpositive8(_mm256_or_ps(g, sign));  // e^-|g|
  const __m256 num = _mm256_blendv_ps(g, _mm256_mul_ps(g, e), g);
  return _mm256_mul_ps(_mm256_div_ps(num, _mm256_add_ps(one, e)), u);
}
#endif
