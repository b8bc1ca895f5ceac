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

// Blocks sit anywhere in the pool, so the hardware prefetcher loses the stream at every block edge
// (and at every 4 KiB page inside one); asking for the next block while this one is computed keeps
// the loads from waiting on memory. Into L2, not L1: a block is 12 KiB at SmolLM2's shape, and
// prefetching it into L1 evicted the block being read (measured: 1.4x slower than the L2 hint). The
// next block is asked for in one slice per KV head computed, not all at once: a burst of 192
// prefetches fills the core's miss buffers and stalls it until they drain, so the compute waited on
// memory instead of overlapping it (perf: a quarter of the kernel's cold samples sat on the prefetch
// loop; spread out, a cold b64 step went from 31-37 to 23-29 ms). The slicing is written out in
// both loops on purpose: the same arithmetic in a shared helper measured 37-43 ms, and slices of 8
// keys (one per dense call) 44-50 ms.
// rows x width floats, row starts `stride` floats apart.
static inline void prefetch_block(const float* p, int64_t rows, int64_t width, int64_t stride) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < width; c += 16) __builtin_prefetch(p + r * stride + c, 0, 2);
}

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
  // A task is one query row and a run of its KV heads. With enough rows, a task takes all of a row's
  // heads, so each block (all heads of a token side by side) is read front to back once, which the
  // hardware prefetcher streams; with few rows the heads are split across threads instead. Either way
  // each (row, head) is the same sequence of dense_block_* calls, so the result does not change.
  const int64_t per_task = T >= 4 * at::get_num_threads() ? KVH : 1;
  const int64_t chunks = KVH / per_task;
  at::parallel_for(0, T * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<float> acc(per_task * G * D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / chunks, h0 = (task % chunks) * per_task;
      const int64_t ctx = cl[i];
      const int64_t* table = bt + sq[i] * max_blocks;
      scores.assign(per_task * G * ctx, 0.f);
      const float* qi = qp + (i * H + h0 * G) * D;
      for (int64_t t0 = 0; t0 < ctx; t0 += bs) {
        const float* kb = kp + (table[t0 / bs] * bs * KVH + h0) * D;
        const int64_t n = std::min(bs, ctx - t0);
        const float* kn = t0 + bs < ctx ? kp + (table[t0 / bs + 1] * bs * KVH + h0) * D : nullptr;
        const int64_t part = (bs + per_task - 1) / per_task;
        for (int64_t h = 0; h < per_task; ++h) {
          if (kn && h * part < bs) prefetch_block(kn + h * part * KVH * D, std::min(part, bs - h * part), per_task * D, KVH * D);
          dense_block_scores(qi + h * G * D, G, D, kb + h * D, KVH * D, n, sc, scores.data() + h * G * ctx + t0, ctx);
        }
      }
      // the first value block (and, below, the next task's first key block) have no predecessor to
      // hide their fetch behind, so they are requested before the softmax and the value pass
      prefetch_block(vp + (table[0] * bs * KVH + h0) * D, std::min(bs, ctx), per_task * D, KVH * D);
      for (int64_t g = 0; g < per_task * G; ++g) softmax_inplace(scores.data() + g * ctx, ctx);
      if (task + 1 < end) {
        const int64_t ni = (task + 1) / chunks, nh0 = ((task + 1) % chunks) * per_task;
        prefetch_block(kp + (bt[sq[ni] * max_blocks] * bs * KVH + nh0) * D, std::min(bs, cl[ni]), per_task * D, KVH * D);
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t0 = 0; t0 < ctx; t0 += bs) {
        const float* vb = vp + (table[t0 / bs] * bs * KVH + h0) * D;
        const int64_t n = std::min(bs, ctx - t0);
        const float* vn = t0 + bs < ctx ? vp + (table[t0 / bs + 1] * bs * KVH + h0) * D : nullptr;
        const int64_t part = (bs + per_task - 1) / per_task;
        for (int64_t h = 0; h < per_task; ++h) {
          if (vn && h * part < bs) prefetch_block(vn + h * part * KVH * D, std::min(part, bs - h * part), per_task * D, KVH * D);
          dense_block_values(scores.data() + h * G * ctx + t0, ctx, G, D, vb + h * D, KVH * D, n, acc.data() + h * G * D);
        }
      }
      float* o = op + (i * H + h0 * G) * D;
      std::copy(acc.begin(), acc.end(), o);
    }
  });
  return out;
}

// k_cache[slot_mapping[t]] = k[t] (and the same for v): one row copy per token instead of two
// index_copy_ dispatches per layer. k, v: [T, KVH, D] with contiguous heads; caches [NB, bs, KVH, D].
void write_kv_rows(torch::Tensor k, torch::Tensor v, torch::Tensor k_cache, torch::Tensor v_cache,
                   torch::Tensor slot_mapping) {
  TORCH_CHECK(k.dtype() == torch::kFloat32 && v.dtype() == torch::kFloat32 && k_cache.dtype() == torch::kFloat32 &&
              v_cache.dtype() == torch::kFloat32, "float32 only");
  const int64_t T = k.size(0), row = k_cache.size(2) * k_cache.size(3);
  TORCH_CHECK(k.size(1) * k.size(2) == row && v.size(1) * v.size(2) == row, "k/v rows do not match the cache");
  TORCH_CHECK(k.stride(2) == 1 && k.stride(1) == k.size(2) && v.stride(2) == 1 && v.stride(1) == v.size(2),
              "k and v must have contiguous heads");
  auto slots = slot_mapping.to(torch::kInt64).contiguous();
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  for (int64_t t = 0; t < T; ++t) TORCH_CHECK(sp[t] >= 0 && sp[t] < num_slots, "slot out of range");
  const float *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float *kc = k_cache.data_ptr<float>(), *vc = v_cache.data_ptr<float>();
  const int64_t ks = k.stride(0), vs = v.stride(0);
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(kc + sp[t] * row, kp + t * ks, row * sizeof(float));
    std::memcpy(vc + sp[t] * row, vp + t * vs, row * sizeof(float));
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_attention_rows", &paged_attention_rows, "paged attention per query row (CPU, fp32)", py::call_guard<py::gil_scoped_release>());
  m.def("write_kv_rows", &write_kv_rows, "write this step's K/V rows into their cache slots (CPU, fp32)", py::call_guard<py::gil_scoped_release>());
}
