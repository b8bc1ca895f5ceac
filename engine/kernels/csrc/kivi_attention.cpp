// Decode attention over a KIVI-quantized paged cache, reading the packed codes in place. Keys are stored
// per channel over the tokens of a block (codes [NB, KVH, D, bs * kbits / 8], fp16 scale and minimum per
// channel), values per token in groups of channels (codes [NB, bs, KVH, D * vbits / 8], fp16 scale and
// minimum per group). Blocks that sit in the full-precision staging pool (a sequence's unfinished block
// and its first block) are read from there instead.
//
// Nothing is dequantized into memory: with k = min + scale * code per channel,
//   q . k_j = sum_d q_d min_d + sum_d (q_d scale_d) code_dj,
// so a block costs one pass over its packed codes, a quarter (4 bits) of the bytes an fp32 cache reads.
// Decode attention is bound by those bytes, which is why the quantized cache can be faster than fp32.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "softmax.h"
#ifdef __F16C__
#include <immintrin.h>
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
  for (int64_t t0 = 0; t0 < ctx; t0 += bs) {
    const int64_t b = table[t0 / bs], n = std::min(bs, ctx - t0), slot = slot_of[b];
    if (slot >= 0) {
      for (int64_t j = 0; j < n; ++j) {
        const float* k = sk + ((slot * bs + j) * KVH + h) * D;
        for (int64_t g = 0; g < G; ++g) {
          const float* qg = qi + g * D;
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int64_t d = 0; d < D; ++d) s += qg[d] * k[d];
          scores[g * ctx + t0 + j] = s * sc;
        }
      }
      continue;
    }
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
  }
  for (int64_t g = 0; g < G; ++g) softmax_inplace(scores.data() + g * ctx, ctx);
  for (int64_t x = 0; x < G * D; ++x) out[x] = 0.f;
  const int64_t gsize = D / VG;
  float* vrow = buf.data();
  for (int64_t t0 = 0; t0 < ctx; t0 += bs) {
    const int64_t b = table[t0 / bs], n = std::min(bs, ctx - t0), slot = slot_of[b];
    for (int64_t j = 0; j < n; ++j) {
      const float* v;
      if (slot >= 0) {
        v = sv + ((slot * bs + j) * KVH + h) * D;
      } else {
        const int64_t row = (b * bs + j) * KVH + h;
        for (int64_t grp = 0; grp < VG; ++grp)
          dequant_row<VB>(vc + row * vbytes + grp * gsize * VB / 8, gsize,
                           half_to_float(vs[row * VG + grp]), half_to_float(vm[row * VG + grp]),
                           vrow + grp * gsize);
        v = vrow;
      }
      for (int64_t g = 0; g < G; ++g) {
        const float p = scores[g * ctx + t0 + j];
        float* a = out + g * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) a[d] += p * v[d];
      }
    }
  }
}

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
  at::parallel_for(0, B * KVH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, buf;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / KVH, h = task % KVH;
      const float* qi = qp + (i * H + h * G) * D;
      float* o = op + (i * H + h * G) * D;
      const int64_t* table = bt + i * max_blocks;
const int64_t ctx = cl[i];
#define TESSERA_ROW(K, V)                                                                                      \
  attend_row<K, V>(qi, G, D, ctx, bs, table, slot_of, h, KVH, kc, ks, km, kbytes, vc, vs, vm, vbytes, VG, sk, sv, \
                   sc, o, scores, buf)
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
