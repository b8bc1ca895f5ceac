// Paged attention for the CPU, one query row at a time: every query token (decode, prefill, chunked
// prefill, draft verification) reads its keys and values in place from the block pool and is
// computed by the same loop in the same summation order. A token's result therefore depends only on
// its own context, never on how the scheduler chunked or batched it: decode steps reproduce the
// prefill of the same tokens bit for bit, which is what makes batching invisible. The portable
// reference instead gathers each sequence's blocks into a contiguous copy and calls SDPA, whose
// blocking (and rounding) varies with the shape of the call.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dense_rows.h"
#include "softmax.h"

torch::Tensor paged_attention_rows(torch::Tensor q,             // [T, H, D] float32
                                   torch::Tensor k_cache,       // [NB, bs, KVH, D] float32
                                   torch::Tensor v_cache,       // [NB, bs, KVH, D] float32
                                   torch::Tensor block_tables,  // [S, max_blocks] int64
                                   torch::Tensor seq_of,        // [T] int64: row of block_tables
                                   torch::Tensor ctx_of,        // [T] int64: keys seen, itself included
                                   double scale) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && k_cache.dtype() == torch::kFloat32, "float32 only");
  q = q.contiguous();
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t bs = k_cache.size(1), KVH = k_cache.size(2);
  const int64_t G = H / KVH, max_blocks = block_tables.size(1);
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k_cache.data_ptr<float>();
  const float* vp = v_cache.data_ptr<float>();
  const int64_t* bt = block_tables.data_ptr<int64_t>();
  const int64_t* sq = seq_of.data_ptr<int64_t>();
  const int64_t* cl = ctx_of.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, T * KVH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<float> acc(G * D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / KVH, h = task % KVH;
      const int64_t ctx = cl[i];
      const int64_t* table = bt + sq[i] * max_blocks;
      scores.assign(G * ctx, 0.f);
      const float* qi = qp + (i * H + h * G) * D;
      // walk the context block by block: no division per token
      for (int64_t t0 = 0; t0 < ctx; t0 += bs) {
        const float* kb = kp + (table[t0 / bs] * bs * KVH + h) * D;
        dense_block_scores(qi, G, D, kb, KVH * D, std::min(bs, ctx - t0), sc, scores.data() + t0, ctx);
      }
      for (int64_t g = 0; g < G; ++g) softmax_inplace(scores.data() + g * ctx, ctx);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t0 = 0; t0 < ctx; t0 += bs) {
        const float* vb = vp + (table[t0 / bs] * bs * KVH + h) * D;
        dense_block_values(scores.data() + t0, ctx, G, D, vb, KVH * D, std::min(bs, ctx - t0), acc.data());
      }
      for (int64_t g = 0; g < G; ++g) {
        float* o = op + (i * H + h * G + g) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = acc[g * D + d];
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_attention_rows", &paged_attention_rows, "paged attention per query row (CPU, fp32)");
}
