// Decode attention over a KIVI-quantized paged cache, reading the packed codes in place. Keys are stored
// per channel over the tokens of a block (codes [NB, KVH, D, bs * kbits / 8], fp16 scale and minimum per
// channel), values per token in groups of channels (codes [NB, bs, KVH, D * vbits / 8], fp16 scale and
// minimum per group). Blocks that sit in the full-precision staging pool (a sequence's unfinished block
// and its first block) are read from there instead.
//
// The scale and minimum are folded into the arithmetic rather than applied to each element: with
// k = min + scale * code per channel,
//   q . k_j = sum_d q_d min_d + sum_d (q_d scale_d) code_dj,
// and with v = min_g + scale_g * code per token and group,
//   sum_j p_j v_jd = sum_j (p_j scale_jg) code_jd + sum_j p_j min_jg,
// so each code is widened to float once per KV head and used by all the query heads that share it.
// The AVX2 path covers the default shapes (16-token blocks, 16-channel value groups); other shapes take
// the portable path, which dequantizes a block into a buffer that stays in L1.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dense_rows.h"
#include "softmax.h"
#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define TESSERA_KIVI_AVX2 1
#endif

// fp16 scale / minimum to float: one instruction with F16C, c10's bit manipulation otherwise
static inline float half_to_float(at::Half h) {
#ifdef __F16C__
  return _cvtsh_ss(h.x);
#else
  return static_cast<float>(h);
#endif
}

// A group of n codes is packed in m = n * BITS / 8 bytes, byte i holding codes i, m + i, 2m + i, ... from
// its lowest bits up (kv_quant.pack), so each shift yields m consecutive codes: stride-1, vectorized.
template <int BITS>
static inline void dequant_row(const uint8_t* codes, int64_t n, float scale, float minimum, float* out) {
  constexpr int PER = 8 / BITS;
  constexpr int MASK = (1 << BITS) - 1;
  const int64_t m = n / PER;
  for (int r = 0; r < PER; ++r) {
    float* o = out + r * m;
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) o[i] = minimum + scale * static_cast<float>((codes[i] >> (r * BITS)) & MASK);
  }
}

// The context block by block, for one KV head: a staged block's full-precision rows (n rows of KVH * D
// floats, from this head on) go to `staged(t0, n, rows)`, a quantized block to `quantized(t0, n, b)`.
template <class Staged, class Quantized>
static inline void for_each_block(int64_t ctx, int64_t bs, const int64_t* table, const int64_t* slot_of,
                                  const float* stage, int64_t KVH, int64_t h, int64_t D, Staged staged,
                                  Quantized quantized) {
  for (int64_t t0 = 0; t0 < ctx; t0 += bs) {
    const int64_t b = table[t0 / bs], n = std::min(bs, ctx - t0), slot = slot_of[b];
    if (slot >= 0)
      staged(t0, n, stage + (slot * bs * KVH + h) * D);
    else
      quantized(t0, n, b);
  }
}

// One (sequence, KV head): a quantized block is dequantized into a small buffer that stays in L1 (keys
// channel-major [D][bs], so each query's scores are a stride-1 FMA over the block's tokens; values one
// token row at a time), then read like the fp32 cache.
template <int KB, int VB>
static void attend_row(const float* qi, int64_t G, int64_t D, int64_t ctx, int64_t bs, const int64_t* table,
                       const int64_t* slot_of, int64_t h, int64_t KVH, const uint8_t* kc,
                       const at::Half* ks, const at::Half* km, int64_t kbytes, const uint8_t* vc,
                       const at::Half* vs, const at::Half* vm, int64_t vbytes, int64_t VG, const float* sk,
                       const float* sv, float sc, float* out, std::vector<float>& scores,
                       std::vector<float>& buf) {
  scores.assign(G * ctx, 0.f);
  buf.resize(std::max(D * bs, D));
  float* kbuf = buf.data();
  const auto staged_keys = [&](int64_t t0, int64_t n, const float* rows) {
    dense_block_scores(qi, G, D, rows, KVH * D, n, sc, scores.data() + t0, ctx);
  };
  for_each_block(ctx, bs, table, slot_of, sk, KVH, h, D, staged_keys, [&](int64_t t0, int64_t n, int64_t b) {
    const int64_t base = (b * KVH + h) * D;
    for (int64_t d = 0; d < D; ++d)
      dequant_row<KB>(kc + (base + d) * kbytes, bs, half_to_float(ks[base + d]),
                       half_to_float(km[base + d]), kbuf + d * bs);
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = qi + g * D;
      float* sg = scores.data() + g * ctx + t0;
      float tmp[256];  // bs <= 256
      for (int64_t j = 0; j < bs; ++j) tmp[j] = 0.f;
      for (int64_t d = 0; d < D; ++d) {
        const float qd = qg[d];
        const float* kd = kbuf + d * bs;
#pragma omp simd
        for (int64_t j = 0; j < bs; ++j) tmp[j] += qd * kd[j];
      }
      for (int64_t j = 0; j < n; ++j) sg[j] = tmp[j] * sc;
    }
  });
  for (int64_t g = 0; g < G; ++g) softmax_inplace(scores.data() + g * ctx, ctx);
  for (int64_t x = 0; x < G * D; ++x) out[x] = 0.f;
  const int64_t gsize = D / VG;
  float* vrow = buf.data();
  const auto staged_values = [&](int64_t t0, int64_t n, const float* rows) {
    dense_block_values(scores.data() + t0, ctx, G, D, rows, KVH * D, n, out);
  };
  for_each_block(ctx, bs, table, slot_of, sv, KVH, h, D, staged_values, [&](int64_t t0, int64_t n, int64_t b) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t row = (b * bs + j) * KVH + h;
      for (int64_t grp = 0; grp < VG; ++grp)
        dequant_row<VB>(vc + row * vbytes + grp * gsize * VB / 8, gsize, half_to_float(vs[row * VG + grp]),
                         half_to_float(vm[row * VG + grp]), vrow + grp * gsize);
      dense_block_values(scores.data() + t0 + j, ctx, G, D, vrow, D, 1, out);
    }
  });
}

#ifdef TESSERA_KIVI_AVX2
// 16 codes packed as in kv_quant.pack -> codes 0-7 in lo, 8-15 in hi, as floats
template <int BITS>
static inline void codes16(const uint8_t* c, __m256& lo, __m256& hi) {
  if constexpr (BITS == 8) {
    lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c))));
    hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + 8))));
  } else if constexpr (BITS == 4) {  // byte i: code i (low nibble), code 8 + i (high nibble)
    const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)));
    lo = _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(15)));
    hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(x, 4));
  } else {  // byte i: codes i, 4 + i, 8 + i, 12 + i, two bits each
    int32_t w;
    std::memcpy(&w, c, 4);
    const __m256i x = _mm256_cvtepu8_epi32(_mm_set1_epi32(w));  // bytes 0-3 twice
    const __m256i three = _mm256_set1_epi32(3);
    lo = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(x, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)), three));
    hi = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(x, _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6)), three));
  }
}

// Scores of GC query heads against one quantized 16-token key block: out[g * ctx + j], j < n.
// qs: [GC][D] queries already multiplied by the softmax scale and the block's channel scales.
template <int KB, int GC>
static inline void key_block16(const uint8_t* codes, int64_t kbytes, int64_t D, const float* qs,
                               const float* bias, int64_t n, int64_t ctx, float* out) {
  __m256 lo[GC], hi[GC];
  for (int g = 0; g < GC; ++g) lo[g] = hi[g] = _mm256_set1_ps(bias[g]);
  for (int64_t d = 0; d < D; ++d) {
    __m256 cl, ch;
    codes16<KB>(codes + d * kbytes, cl, ch);
    for (int g = 0; g < GC; ++g) {
      const __m256 w = _mm256_broadcast_ss(qs + g * D + d);
      lo[g] = _mm256_fmadd_ps(w, cl, lo[g]);
      hi[g] = _mm256_fmadd_ps(w, ch, hi[g]);
    }
  }
  for (int g = 0; g < GC; ++g) {
    alignas(32) float tmp[16];
    _mm256_store_ps(tmp, lo[g]);
    _mm256_store_ps(tmp + 8, hi[g]);
    std::memcpy(out + g * ctx, tmp, n * sizeof(float));
  }
}

// out[g][16 channels of group grp] += sum_j p[g][j] v_j over the n tokens of one quantized value block.
template <int VB, int GC>
static inline void value_block16(const uint8_t* vc, const at::Half* vs, const at::Half* vm, int64_t row0,
                                 int64_t row_step, int64_t vbytes, int64_t VG, int64_t grp, const float* p,
                                 int64_t ctx, int64_t n, int64_t D, float* out) {
  __m256 lo[GC], hi[GC];
  float bias[GC];
  for (int g = 0; g < GC; ++g) { lo[g] = hi[g] = _mm256_setzero_ps(); bias[g] = 0.f; }
  for (int64_t j = 0; j < n; ++j) {
    const int64_t row = row0 + j * row_step;
    const float s = half_to_float(vs[row * VG + grp]), m = half_to_float(vm[row * VG + grp]);
    __m256 cl, ch;
    codes16<VB>(vc + row * vbytes + grp * 2 * VB, cl, ch);
    for (int g = 0; g < GC; ++g) {
      const float pj = p[g * ctx + j];
      const __m256 w = _mm256_set1_ps(pj * s);
      lo[g] = _mm256_fmadd_ps(w, cl, lo[g]);
      hi[g] = _mm256_fmadd_ps(w, ch, hi[g]);
      bias[g] += pj * m;
    }
  }
  for (int g = 0; g < GC; ++g) {
    float* o = out + g * D + grp * 16;
    const __m256 b = _mm256_set1_ps(bias[g]);
    _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), _mm256_add_ps(lo[g], b)));
    _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), _mm256_add_ps(hi[g], b)));
  }
}

// Query heads go through in chunks of up to four, so that a chunk's accumulators stay in registers.
#define TESSERA_CHUNKS(CALL) \
  switch (gc) {              \
    case 1: CALL(1); break;  \
    case 2: CALL(2); break;  \
    case 3: CALL(3); break;  \
    default: CALL(4); break; \
  }

// attend_row for 16-token blocks and 16-channel value groups
template <int KB, int VB>
static void attend_row16(const float* qi, int64_t G, int64_t D, int64_t ctx, const int64_t* table,
                         const int64_t* slot_of, int64_t h, int64_t KVH, const uint8_t* kc,
                         const at::Half* ks, const at::Half* km, int64_t kbytes, const uint8_t* vc,
                         const at::Half* vs, const at::Half* vm, int64_t vbytes, int64_t VG, const float* sk,
                         const float* sv, float sc, float* out, std::vector<float>& scores,
                         std::vector<float>& buf) {
  constexpr int64_t bs = 16;
  scores.assign(G * ctx, 0.f);
  buf.resize(G * D + 2 * D + G);
  float* qs = buf.data();
  float* sd = qs + G * D;
  float* md = sd + D;
  float* bias = md + D;
  const auto staged_keys = [&](int64_t t0, int64_t n, const float* rows) {
    dense_block_scores(qi, G, D, rows, KVH * D, n, sc, scores.data() + t0, ctx);
  };
  for_each_block(ctx, bs, table, slot_of, sk, KVH, h, D, staged_keys, [&](int64_t t0, int64_t n, int64_t b) {
    const int64_t base = (b * KVH + h) * D;
    for (int64_t d = 0; d < D; ++d) {
      sd[d] = half_to_float(ks[base + d]) * sc;
      md[d] = half_to_float(km[base + d]) * sc;
    }
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = qi + g * D;
      float* qsg = qs + g * D;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int64_t d = 0; d < D; ++d) {
        qsg[d] = qg[d] * sd[d];
        acc += qg[d] * md[d];
      }
      bias[g] = acc;
    }
    for (int64_t g0 = 0; g0 < G; g0 += 4) {
      const int64_t gc = std::min<int64_t>(4, G - g0);
#define TESSERA_KEYS(GC) \
  key_block16<KB, GC>(kc + base * kbytes, kbytes, D, qs + g0 * D, bias + g0, n, ctx, scores.data() + g0 * ctx + t0)
      TESSERA_CHUNKS(TESSERA_KEYS)
#undef TESSERA_KEYS
    }
  });
  for (int64_t g = 0; g < G; ++g) softmax_inplace(scores.data() + g * ctx, ctx);
  for (int64_t x = 0; x < G * D; ++x) out[x] = 0.f;
  const auto staged_values = [&](int64_t t0, int64_t n, const float* rows) {
    dense_block_values(scores.data() + t0, ctx, G, D, rows, KVH * D, n, out);
  };
  for_each_block(ctx, bs, table, slot_of, sv, KVH, h, D, staged_values, [&](int64_t t0, int64_t n, int64_t b) {
    for (int64_t grp = 0; grp < VG; ++grp)
      for (int64_t g0 = 0; g0 < G; g0 += 4) {
        const int64_t gc = std::min<int64_t>(4, G - g0);
#define TESSERA_VALUES(GC)                                                                                  \
  value_block16<VB, GC>(vc, vs, vm, b * bs * KVH + h, KVH, vbytes, VG, grp, scores.data() + g0 * ctx + t0, ctx, n, \
                        D, out + g0 * D)
        TESSERA_CHUNKS(TESSERA_VALUES)
#undef TESSERA_VALUES
      }
  });
}
#undef TESSERA_CHUNKS
#endif  // TESSERA_KIVI_AVX2

torch::Tensor kivi_decode_attention(torch::Tensor q,              // [B, H, D] float32
                                    torch::Tensor k_codes,        // [NB, KVH, D, bs * kbits / 8] uint8
                                    torch::Tensor k_scale,        // [NB, KVH, D, 1] float16
                                    torch::Tensor k_min,          // [NB, KVH, D, 1] float16
                                    torch::Tensor v_codes,        // [NB, bs, KVH, D * vbits / 8] uint8
                                    torch::Tensor v_scale,        // [NB, bs, KVH, D / vgroup] float16
                                    torch::Tensor v_min,          // [NB, bs, KVH, D / vgroup] float16
                                    torch::Tensor stage_k,        // [S, bs, KVH, D] float32
                                    torch::Tensor stage_v,        // [S, bs, KVH, D] float32
                                    torch::Tensor slot_of_block,  // [NB] int64, -1 when not staged
                                    torch::Tensor block_tables,   // [B, max_blocks] int64
                                    torch::Tensor context_lens,   // [B] int64, the query included
                                    int64_t kbits, int64_t vbits, double scale) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && stage_k.dtype() == torch::kFloat32, "float32 only");
  TORCH_CHECK(k_scale.dtype() == torch::kFloat16 && v_scale.dtype() == torch::kFloat16, "fp16 scales");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t KVH = k_codes.size(1), bs = stage_k.size(1), G = H / KVH;
  const int64_t kbytes = k_codes.size(3), vbytes = v_codes.size(3), VG = v_scale.size(3);
  const int64_t max_blocks = block_tables.size(1);
  TORCH_CHECK(G <= 64, "at most 64 query heads per KV head");
  TORCH_CHECK(kbytes * 8 == bs * kbits && vbytes * 8 == D * vbits, "code shapes do not match the bits");
  TORCH_CHECK((D / VG) * vbits % 8 == 0 && bs <= 256, "a value group must fill whole bytes; bs <= 256");
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const uint8_t* kc = k_codes.data_ptr<uint8_t>();
  const at::Half* ks = k_scale.data_ptr<at::Half>();
  const at::Half* km = k_min.data_ptr<at::Half>();
  const uint8_t* vc = v_codes.data_ptr<uint8_t>();
  const at::Half* vs = v_scale.data_ptr<at::Half>();
  const at::Half* vm = v_min.data_ptr<at::Half>();
  const float* sk = stage_k.data_ptr<float>();
  const float* sv = stage_v.data_ptr<float>();
  const int64_t* slot_of = slot_of_block.data_ptr<int64_t>();
  const int64_t* bt = block_tables.data_ptr<int64_t>();
  const int64_t* cl = context_lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  const int vb = static_cast<int>(vbits);
  [[maybe_unused]] const bool fast16 = bs == 16 && D / VG == 16 && D % 8 == 0;
  at::parallel_for(0, B * KVH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, buf;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / KVH, h = task % KVH;
      const float* qi = qp + (i * H + h * G) * D;
      float* o = op + (i * H + h * G) * D;
      const int64_t* table = bt + i * max_blocks;
const int64_t ctx = cl[i];
#ifdef TESSERA_KIVI_AVX2
#define TESSERA_ROW(K, V)                                                                                        \
  do {                                                                                                           \
    if (fast16)                                                                                                  \
      attend_row16<K, V>(qi, G, D, ctx, table, slot_of, h, KVH, kc, ks, km, kbytes, vc, vs, vm, vbytes, VG, sk, sv, \
                         sc, o, scores, buf);                                                                    \
    else                                                                                                         \
      attend_row<K, V>(qi, G, D, ctx, bs, table, slot_of, h, KVH, kc, ks, km, kbytes, vc, vs, vm, vbytes, VG, sk, sv, \
                       sc, o, scores, buf);                                                                      \
  } while (0)
#else
#define TESSERA_ROW(K, V)                                                                                      \
  attend_row<K, V>(qi, G, D, ctx, bs, table, slot_of, h, KVH, kc, ks, km, kbytes, vc, vs, vm, vbytes, VG, sk, sv, \
                   sc, o, scores, buf)
#endif
#define TESSERA_ROW_V(K)          \
  if (vb == 8) TESSERA_ROW(K, 8); \
  else if (vb == 4) TESSERA_ROW(K, 4); \
  else TESSERA_ROW(K, 2)
      if (kbits == 8) { TESSERA_ROW_V(8); }
      else if (kbits == 4) { TESSERA_ROW_V(4); }
      else { TESSERA_ROW_V(2); }
#undef TESSERA_ROW_V
#undef TESSERA_ROW
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("kivi_decode_attention", &kivi_decode_attention,
        "decode attention over a KIVI-quantized paged cache (CPU, fp32 queries)");
}
