// A lossless 4-bit code for fp32 weights whose every block of 32 input features (one output row) holds
// values w = fma(d, q, m) with q in 0..15: what dequantizing a Q4_1 GGUF (the default model's source)
// produces, since its d * q is exact in fp32. Such a matrix is stored as those (d, m, q) instead of its
// fp32 values, 5.3x fewer bytes, and decoded back to the very same fp32 bits tile by tile inside the GEMM
// (panel_linear.cpp). Decode reads a sixth of the memory the fp32 panels need, which is what a decode
// step with few rows is bound by; the arithmetic on the decoded values is the fp32 panel kernel's.
//
// Layout, per 16-column panel p and block b of 32 input features (kAffineRecord bytes):
//   float d[16], float m[16]         the 16 columns' scale and offset
//   uint8 codes[16][16]              codes[j][c] = q(k = 32b + 2j, c) | q(k = 32b + 2j + 1, c) << 4
// Columns past N hold d = m = 0, q = 0, so they decode to +0 as the fp32 panels' padding does.
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>

#include "panel_tile.h"  // kPanel, kAffineBlock, kAffineRecord

namespace affine4 {

inline bool same_bits(float a, float b) {
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y;
}

// q[32] for w[32] under (d, m), or false when some value is not fma(d, q, m) for any q in 0..15
inline bool fit(const float* w, float d, float m, uint8_t* q) {
  for (int i = 0; i < kAffineBlock; ++i) {
    const float r = d != 0.f ? std::nearbyint((w[i] - m) / d) : 0.f;
    if (!(r >= 0.f && r <= 15.f)) return false;
    if (!same_bits(std::fma(d, r, m), w[i])) return false;
    q[i] = static_cast<uint8_t>(r);
  }
  return true;
}

// (d, m, q) of one block, trying the scales a quantizer would have stored: the step (max - min) / 15
// rounded to fp16 (GGUF's) or fp32, and their nearest neighbours
inline bool encode_block(const float* w, float& d_out, float& m_out, uint8_t* q) {
  float lo = w[0], hi = w[0];
  for (int i = 1; i < kAffineBlock; ++i) {
    if (!std::isfinite(w[i])) return false;
    lo = std::min(lo, w[i]);
    hi = std::max(hi, w[i]);
  }
  if (!std::isfinite(w[0])) return false;
  m_out = lo;
  const double step = (static_cast<double>(hi) - lo) / 15.0;
  if (step == 0.0) {
    d_out = 0.f;
    return fit(w, 0.f, lo, q);
  }
  const c10::Half h(static_cast<float>(step));
  for (int delta : {0, -1, 1, -2, 2}) {
    const c10::Half c(static_cast<uint16_t>(h.x + delta), c10::Half::from_bits());
    const float d = static_cast<float>(c);
    if (d > 0.f && std::isfinite(d) && fit(w, d, lo, q)) {
      d_out = d;
      return true;
    }
  }
  float f = static_cast<float>(step);
  for (int delta : {0, -1, 1, -2, 2}) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    bits += delta;
    float d;
    std::memcpy(&d, &bits, 4);
    if (d > 0.f && std::isfinite(d) && fit(w, d, lo, q)) {
      d_out = d;
      return true;
    }
  }
  return false;
}

}  // namespace affine4

// weight: [N, K] fp32 -> [ceil(N/16), K/32, kAffineRecord] uint8, or none when K is not a multiple of 32
// or some block is not exactly representable (the caller keeps fp32 panels only then)
inline std::optional<torch::Tensor> affine4_encode(torch::Tensor weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kFloat32, "affine4: weight must be [N, K] fp32");
  const int64_t N = weight.size(0), K = weight.size(1), panels = (N + kPanel - 1) / kPanel;
  if (K == 0 || K % kAffineBlock) return std::nullopt;
  const auto w = weight.contiguous();
  const float* W = w.data_ptr<float>();
  const int64_t blocks = K / kAffineBlock;
  auto out = torch::zeros({panels, blocks, kAffineRecord}, torch::dtype(torch::kUInt8));
  uint8_t* O = out.data_ptr<uint8_t>();
  std::atomic<bool> ok{true};
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    uint8_t q[kAffineBlock];
    for (int64_t n = n0; n < n1 && ok.load(std::memory_order_relaxed); ++n) {
      const int64_t p = n / kPanel, c = n % kPanel;
      for (int64_t b = 0; b < blocks; ++b) {
        float d, m;
        if (!affine4::encode_block(W + n * K + b * kAffineBlock, d, m, q)) {
          ok = false;
          return;
        }
        uint8_t* rec = O + (p * blocks + b) * kAffineRecord;
        std::memcpy(rec + 4 * c, &d, 4);
        std::memcpy(rec + 4 * (kPanel + c), &m, 4);
        uint8_t* codes = rec + 8 * kPanel;
        for (int j = 0; j < kAffineBlock / 2; ++j) codes[j * kPanel + c] = q[2 * j] | (q[2 * j + 1] << 4);
      }
    }
  });
  if (!ok) return std::nullopt;
  return out;
}

#ifdef TESSERA_PANEL_AVX512
// one panel's K x 16 fp32 weights, as the fp32 panel layout holds them: dst[k * 16 + c], K % 32 == 0;
// the micro-kernel's own decoder (panel_tile.h), so a test of this is a test of what the GEMM reads
inline void affine4_decode_panel(const uint8_t* src, int64_t K, float* dst) {
  const Affine4Decoder dec;
  for (int64_t b = 0; b < K / kAffineBlock; ++b, src += kAffineRecord, dst += kAffineBlock * kPanel) {
    const __m512 d = _mm512_loadu_ps(reinterpret_cast<const float*>(src));
    const __m512 m = _mm512_loadu_ps(reinterpret_cast<const float*>(src) + kPanel);
    for (int j = 0; j < kAffineBlock / 2; ++j) {
      __m512 w0, w1;
      dec.pair(src, j, d, m, w0, w1);
      _mm512_storeu_ps(dst + 2 * j * kPanel, w0);
      _mm512_storeu_ps(dst + (2 * j + 1) * kPanel, w1);
    }
  }
}
#endif
