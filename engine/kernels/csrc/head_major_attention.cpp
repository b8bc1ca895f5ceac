// Paged attention for the CPU over the head-major fp32 cache: per block and KV head, the keys as [D, bs]
// and then the values as [bs, D], side by side in memory (k_cache [NB, KVH, D, bs] and v_cache
// [NB, KVH, bs, D] are views of one [NB, KVH, 2, D * bs] tensor). Every query row (decode, prefill,
// chunked prefill, draft verification) is computed by the same loop in the same order, so a token's
// result depends only on its own context, never on its batch.
//
// Why this layout and one pass: decode is bound by reading the cache (every step reads each context
// token's K and V once). With keys [D, bs], one 16-lane vector holds a feature of 16 keys, so scores are
// 16-lane FMAs with the query feature broadcast (no horizontal sums) and one key vector serves every
// query head of its KV head; with the values right after them, a block is one stretch of memory read
// front to back, once, with the softmax kept online (running maximum and sum per query head). Against
// the token-major two-pass kernel (paged_attention.cpp), a decode step of SmolLM2-135M at batch 64 and
// ~200 tokens of context went from 26.0 to 19.1 ms over its 30 layers (2-core EPYC dev machine).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "softmax.h"

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>
#define TESSERA_HM_AVX512 1
#endif

namespace {

constexpr int64_t kLanes = 16;
constexpr int kMaxAcc = 24;  // accumulator registers a pass may hold

struct Geometry {
  int64_t H, KVH, G, D, bs, max_blocks;
  int64_t block_stride, head_stride;  // floats between blocks, between KV heads of a block (k and v alike)
};

#ifdef TESSERA_HM_AVX512
// exp_nonpositive8 on each half: the same bits per lane as the two-pass kernels' softmax
inline __m512 exp_nonpositive16(__m512 x) {
  const __m256 lo = exp_nonpositive8(_mm512_castps512_ps256(x));
  const __m256 hi = exp_nonpositive8(_mm512_extractf32x8_ps(x, 1));
  return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}

// Online softmax state of GC query heads: running maximum and sum, and the weighted sum of values
// (DC 16-lane chunks of D) parked in `acc` between blocks.
template <int GC, int DC>
struct RowState {
  float m[GC], l[GC];
  alignas(64) float acc[GC][DC * kLanes];

  void reset() {
    for (int g = 0; g < GC; ++g) {
      m[g] = -std::numeric_limits<float>::infinity();
      l[g] = 0.f;
      std::memset(acc[g], 0, sizeof(acc[g]));
    }
  }
};

// One 16-key group of one KV head against GC of its query heads: scores from kh ([D, ldk], this group's
// columns), online-softmax update, then the weighted values vh ([n, D]). Each score is four partial sums
// over d (d mod 4) added pairwise: a fixed order for every row.
template <int GC, int DC>
inline void attend_group(const float* q, int64_t D, const float* kh, int64_t ldk, const float* vh, int64_t n,
                         float sc, RowState<GC, DC>& st) {
  __m512 a[GC][4];
#pragma GCC unroll 6
  for (int g = 0; g < GC; ++g)
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) a[g][c] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 4) {
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m512 k = _mm512_loadu_ps(kh + (d + c) * ldk);
#pragma GCC unroll 6
      for (int g = 0; g < GC; ++g) a[g][c] = _mm512_fmadd_ps(_mm512_set1_ps(q[g * D + d + c]), k, a[g][c]);
    }
  }
  const __mmask16 live = n >= kLanes ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  alignas(64) float p[GC][kLanes];
  float rescale[GC];
#pragma GCC unroll 6
  for (int g = 0; g < GC; ++g) {
    const __m512 s = _mm512_mask_blend_ps(
        live, ninf,
        _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(a[g][0], a[g][1]), _mm512_add_ps(a[g][2], a[g][3])),
                      _mm512_set1_ps(sc)));
    const float m = std::max(st.m[g], _mm512_reduce_max_ps(s));
    const __m512 e = _mm512_maskz_mov_ps(live, exp_nonpositive16(_mm512_sub_ps(s, _mm512_set1_ps(m))));
    rescale[g] = st.m[g] == -std::numeric_limits<float>::infinity() ? 0.f : exp_nonpositive(st.m[g] - m);
    st.l[g] = st.l[g] * rescale[g] + _mm512_reduce_add_ps(e);
    st.m[g] = m;
    _mm512_store_ps(p[g], e);
  }
  __m512 acc[GC][DC];
#pragma GCC unroll 6
  for (int g = 0; g < GC; ++g) {
    const __m512 f = _mm512_set1_ps(rescale[g]);
#pragma GCC unroll 8
    for (int c = 0; c < DC; ++c) acc[g][c] = _mm512_mul_ps(_mm512_load_ps(st.acc[g] + c * kLanes), f);
  }
  for (int64_t j = 0; j < n; ++j) {
    __m512 v[DC];
#pragma GCC unroll 8
    for (int c = 0; c < DC; ++c) v[c] = _mm512_loadu_ps(vh + j * D + c * kLanes);
#pragma GCC unroll 6
    for (int g = 0; g < GC; ++g) {
      const __m512 w = _mm512_set1_ps(p[g][j]);
#pragma GCC unroll 8
      for (int c = 0; c < DC; ++c) acc[g][c] = _mm512_fmadd_ps(w, v[c], acc[g][c]);
    }
  }
#pragma GCC unroll 6
  for (int g = 0; g < GC; ++g)
#pragma GCC unroll 8
    for (int c = 0; c < DC; ++c) _mm512_store_ps(st.acc[g] + c * kLanes, acc[g][c]);
}

// a token's new key and value rows, heads at `head_stride` floats apart ([KVH, D] each); null: none
struct NewKV {
  const float* k = nullptr;
  const float* v = nullptr;
};

// the lines that writing slot `off` of block `blk` touches, for heads [h0, h1): D key lines (one float
// each, the keys being [D, bs]) and the value row
inline void prefetch_for_write(const Geometry& geo, const float* kc, const float* vc, int64_t blk, int64_t off,
                               int64_t h0, int64_t h1) {
  for (int64_t h = h0; h < h1; ++h) {
    const int64_t at = blk * geo.block_stride + h * geo.head_stride;
    for (int64_t d = 0; d < geo.D; ++d) __builtin_prefetch(kc + at + d * geo.bs + off, 1, 3);
    for (int64_t d = 0; d < geo.D; d += kLanes) __builtin_prefetch(vc + at + off * geo.D + d, 1, 3);
  }
}

inline void write_token(const Geometry& geo, const NewKV& kv, float* kc, float* vc, int64_t blk, int64_t off,
                        int64_t h0, int64_t h1) {
  for (int64_t h = h0; h < h1; ++h) {
    const int64_t at = blk * geo.block_stride + h * geo.head_stride;
    const float* ks = kv.k + h * geo.D;
    for (int64_t d = 0; d < geo.D; ++d) kc[at + d * geo.bs + off] = ks[d];
    std::memcpy(vc + at + off * geo.D, kv.v + h * geo.D, geo.D * sizeof(float));
  }
}

// KV heads [h0, h1) of one row over its whole context: block by block (each block's keys and values
// for those heads are one stretch of memory), every head's query heads in chunks of GC. q: this row's
// queries with each KV head's G query heads padded to `chunks` x GC (zeros); out: [h1 - h0, G, D].
template <int DC, int GC>
void attend_row(const Geometry& geo, const float* q, int64_t chunks, float* kc, float* vc, const int64_t* table,
                int64_t ctx, float sc, int64_t h0, int64_t h1, const NewKV& own, std::vector<RowState<GC, DC>>& states,
                float* out) {
  const int64_t D = geo.D, bs = geo.bs, nb = (ctx + bs - 1) / bs, nh = h1 - h0;
  states.resize(nh * chunks);
  for (auto& st : states) st.reset();
  if (own.k) prefetch_for_write(geo, kc, vc, table[nb - 1], (ctx - 1) % bs, h0, h1);
  for (int64_t b = 0; b < nb; ++b) {
    if (own.k && b == nb - 1) write_token(geo, own, kc, vc, table[b], (ctx - 1) % bs, h0, h1);
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t at = table[b] * geo.block_stride + h * geo.head_stride;
      for (int64_t c0 = 0; c0 < bs && b * bs + c0 < ctx; c0 += kLanes) {
        const int64_t n = std::min<int64_t>(kLanes, ctx - b * bs - c0);
        for (int64_t c = 0; c < chunks; ++c) {
          const float* qc = q + ((h - h0) * chunks + c) * GC * D;
          attend_group<GC, DC>(qc, D, kc + at + c0, bs, vc + at + c0 * D, n, sc, states[(h - h0) * chunks + c]);
        }
      }
    }
  }
  for (int64_t h = 0; h < nh; ++h) {
    for (int64_t g = 0; g < geo.G; ++g) {
      const RowState<GC, DC>& st = states[h * chunks + g / GC];
      const float inv = 1.f / st.l[g % GC];
      for (int64_t d = 0; d < D; ++d) out[(h * geo.G + g) * D + d] = st.acc[g % GC][d] * inv;
    }
  }
}

// one task: the row's queries of KV heads [h0, h1) padded into chunks of GC, then attend_row
template <int DC, int GC>
void run_task(const Geometry& geo, const float* qi, float* kc, float* vc, const int64_t* table, int64_t ctx,
              float sc, int64_t h0, int64_t h1, const NewKV& own, float* out) {
  const int64_t G = geo.G, D = geo.D, chunks = (G + GC - 1) / GC;
  thread_local std::vector<float> padded;
  thread_local std::vector<RowState<GC, DC>> states;
  padded.assign((h1 - h0) * chunks * GC * D, 0.f);
  for (int64_t h = h0; h < h1; ++h)
    std::memcpy(padded.data() + (h - h0) * chunks * GC * D, qi + h * G * D, G * D * sizeof(float));
  attend_row<DC, GC>(geo, padded.data(), chunks, kc, vc, table, ctx, sc, h0, h1, own, states, out);
}

// GC query heads per pass: as many as the accumulators allow (GC x max(DC, 4) of them), split evenly
template <int DC>
void run_task_dc(const Geometry& geo, const float* qi, float* kc, float* vc, const int64_t* table, int64_t ctx,
                 float sc, int64_t h0, int64_t h1, const NewKV& own, float* out) {
  constexpr int64_t kMaxGC = std::min<int64_t>(6, kMaxAcc / std::max<int64_t>(DC, 4));
  const int64_t chunks = (geo.G + kMaxGC - 1) / kMaxGC, gc = (geo.G + chunks - 1) / chunks;
  switch (gc) {
    case 1: run_task<DC, 1>(geo, qi, kc, vc, table, ctx, sc, h0, h1, own, out); break;
    case 2: run_task<DC, 2>(geo, qi, kc, vc, table, ctx, sc, h0, h1, own, out); break;
    case 3: run_task<DC, 3>(geo, qi, kc, vc, table, ctx, sc, h0, h1, own, out); break;
    case 4: if constexpr (kMaxGC >= 4) run_task<DC, 4>(geo, qi, kc, vc, table, ctx, sc, h0, h1, own, out); break;
    case 5: if constexpr (kMaxGC >= 5) run_task<DC, 5>(geo, qi, kc, vc, table, ctx, sc, h0, h1, own, out); break;
    default: if constexpr (kMaxGC >= 6) run_task<DC, 6>(geo, qi, kc, vc, table, ctx, sc, h0, h1, own, out); break;
  }
}
#endif

// keys [NB, KVH, D, bs] and values [NB, KVH, bs, D] with the same block and head strides (views of one
// [NB, KVH, 2, D * bs] cache in the engine) -> their geometry
Geometry geometry(const torch::Tensor& k_cache, const torch::Tensor& v_cache, int64_t H, int64_t max_blocks) {
  TORCH_CHECK(k_cache.dim() == 4 && v_cache.dim() == 4 && k_cache.dtype() == torch::kFloat32 &&
                  v_cache.dtype() == torch::kFloat32,
              "head-major caches must be fp32 [NB, KVH, D, bs] and [NB, KVH, bs, D]");
  const int64_t KVH = k_cache.size(1), D = k_cache.size(2), bs = k_cache.size(3);
  TORCH_CHECK(v_cache.size(0) == k_cache.size(0) && v_cache.size(1) == KVH && v_cache.size(2) == bs &&
                  v_cache.size(3) == D && H % KVH == 0,
              "k_cache ", k_cache.sizes(), " and v_cache ", v_cache.sizes(), " do not match ", H, " query heads");
  TORCH_CHECK(k_cache.stride(3) == 1 && k_cache.stride(2) == bs && v_cache.stride(3) == 1 && v_cache.stride(2) == D &&
                  k_cache.stride(0) == v_cache.stride(0) && k_cache.stride(1) == v_cache.stride(1),
              "head-major caches must share one block layout with contiguous heads");
  return {H, KVH, H / KVH, D, bs, max_blocks, k_cache.stride(0), k_cache.stride(1)};
}

}  // namespace

bool supported(int64_t block_size, int64_t head_dim) {
#ifdef TESSERA_HM_AVX512
  return block_size % kLanes == 0 && head_dim % kLanes == 0 && head_dim <= 8 * kLanes;
#else
  (void)block_size, (void)head_dim;
  return false;
#endif
}

// k, v: [T, KVH, D] with contiguous heads -> checked, with their row strides
std::pair<int64_t, int64_t> new_rows(const torch::Tensor& k, const torch::Tensor& v, const Geometry& geo) {
  TORCH_CHECK(k.dtype() == torch::kFloat32 && v.dtype() == torch::kFloat32 && k.dim() == 3 && v.dim() == 3 &&
                  k.size(0) == v.size(0) && k.size(1) == geo.KVH && k.size(2) == geo.D && v.size(1) == geo.KVH &&
                  v.size(2) == geo.D,
              "k/v must be [T, ", geo.KVH, ", ", geo.D, "] fp32");
  TORCH_CHECK(k.stride(2) == 1 && k.stride(1) == geo.D && v.stride(2) == 1 && v.stride(1) == geo.D,
              "k and v must have contiguous heads");
  return {k.stride(0), v.stride(0)};
}

// Rows [0, num_decode) are decode rows whose own key and value (k, v rows) are not in the cache yet: each
// writes its token into its last block as it gets there (the lines asked for first), so the scattered
// key lines are fetched once, for the write and the read together. Every other row's K/V must already
// be in the cache (write_kv_rows).
torch::Tensor paged_attention_rows(torch::Tensor q,             // [T, H, D] float32
                                   torch::Tensor k,             // [T, KVH, D] float32: this step's keys
                                   torch::Tensor v,             // [T, KVH, D] float32: this step's values
                                   torch::Tensor k_cache,       // [NB, KVH, D, bs] float32 (view)
                                   torch::Tensor v_cache,       // [NB, KVH, bs, D] float32 (view)
                                   torch::Tensor block_tables,  // [S, max_blocks] int64
                                   torch::Tensor seq_of,        // [T] int64: row of block_tables
                                   torch::Tensor ctx_of,        // [T] int64: keys seen, itself included
                                   int64_t num_decode, double scale) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && q.dim() == 3, "q must be [T, H, D] float32");
  q = q.contiguous();
  block_tables = block_tables.contiguous();
  const Geometry geo = geometry(k_cache, v_cache, q.size(1), block_tables.size(1));
  TORCH_CHECK(q.size(2) == geo.D, "q has head dim ", q.size(2), ", the cache ", geo.D);
  TORCH_CHECK(supported(geo.bs, geo.D), "head-major attention: unsupported block size ", geo.bs, " or head dim ",
              geo.D);
  const auto [ks, vs] = new_rows(k, v, geo);
  const int64_t T = q.size(0), H = geo.H, D = geo.D, KVH = geo.KVH;
  TORCH_CHECK(k.size(0) == T && seq_of.numel() == T && ctx_of.numel() == T && num_decode >= 0 && num_decode <= T,
              "rows do not match");
  auto out = torch::empty_like(q);
#ifdef TESSERA_HM_AVX512
  const float* qp = q.data_ptr<float>();
  const float *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  const int64_t* bt = block_tables.data_ptr<int64_t>();
  const int64_t* sq = seq_of.data_ptr<int64_t>();
  const int64_t* cl = ctx_of.data_ptr<int64_t>();
  for (int64_t i = 0; i < num_decode; ++i)
    TORCH_CHECK(cl[i] >= 1 && bt[sq[i] * geo.max_blocks + (cl[i] - 1) / geo.bs] < k_cache.size(0), "slot out of range");
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  // a task is one query row and a run of its KV heads: all of them when there are enough rows for the
  // threads, else one head each. Either way each (row, head) runs the same loop.
  const int64_t per_task = T >= 4 * at::get_num_threads() ? KVH : 1;
  const int64_t chunks = KVH / per_task;
  at::parallel_for(0, T * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / chunks, h0 = (task % chunks) * per_task;
      const float* qi = qp + i * H * D;
      float* oi = op + (i * H + h0 * geo.G) * D;
      const int64_t* table = bt + sq[i] * geo.max_blocks;
      const NewKV own = i < num_decode ? NewKV{kp + i * ks, vp + i * vs} : NewKV{};
#define TESSERA_HM_ROW(DC) run_task_dc<DC>(geo, qi, kc, vc, table, cl[i], sc, h0, h0 + per_task, own, oi)
      switch (D / kLanes) {
        case 1: TESSERA_HM_ROW(1); break;
        case 2: TESSERA_HM_ROW(2); break;
        case 3: TESSERA_HM_ROW(3); break;
        case 4: TESSERA_HM_ROW(4); break;
        case 5: TESSERA_HM_ROW(5); break;
        case 6: TESSERA_HM_ROW(6); break;
        case 7: TESSERA_HM_ROW(7); break;
        default: TESSERA_HM_ROW(8); break;
      }
#undef TESSERA_HM_ROW
    }
  });
#endif
  return out;
}

// k_cache[slot // bs, h, :, slot % bs] = k[t, h] and v_cache[slot // bs, h, slot % bs, :] = v[t, h] for
// every row t. Runs of rows in consecutive slots of one block (a prefill chunk) are written a block
// column group at a time: the keys transposed in a small tile first, so each key line is written whole
// instead of one float per line per token.
void write_kv_rows(torch::Tensor k, torch::Tensor v, torch::Tensor k_cache, torch::Tensor v_cache,
                   torch::Tensor slot_mapping) {
  const Geometry geo = geometry(k_cache, v_cache, k_cache.size(1), 0);
  const auto [ks, vs] = new_rows(k, v, geo);
  const int64_t T = k.size(0), KVH = geo.KVH, D = geo.D, bs = geo.bs;
  auto slots = slot_mapping.to(torch::kInt64).contiguous();
  TORCH_CHECK(slots.numel() == T, "one slot per row");
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t num_slots = k_cache.size(0) * bs;
  for (int64_t t = 0; t < T; ++t) TORCH_CHECK(sp[t] >= 0 && sp[t] < num_slots, "slot out of range");
  // runs: [start, end) of rows in consecutive slots within one block
  std::vector<int64_t> starts;
  for (int64_t t = 0; t < T; ++t)
    if (t == 0 || sp[t] != sp[t - 1] + 1 || sp[t] % bs == 0) starts.push_back(t);
  starts.push_back(T);
  const float *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float *kc = k_cache.data_ptr<float>(), *vc = v_cache.data_ptr<float>();
  const int64_t runs = static_cast<int64_t>(starts.size()) - 1;
  at::parallel_for(0, runs * KVH, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(D * bs);
    for (int64_t rh = begin; rh < end; ++rh) {
      const int64_t r = rh / KVH, h = rh % KVH, t0 = starts[r], n = starts[r + 1] - t0;
      const int64_t blk = sp[t0] / bs, off = sp[t0] % bs;
      const int64_t at = blk * geo.block_stride + h * geo.head_stride;
      for (int64_t j = 0; j < n; ++j) {
        const float* src = kp + (t0 + j) * ks + h * D;
        for (int64_t d = 0; d < D; ++d) tile[d * n + j] = src[d];
        std::memcpy(vc + at + (off + j) * D, vp + (t0 + j) * vs + h * D, D * sizeof(float));
      }
      for (int64_t d = 0; d < D; ++d) std::memcpy(kc + at + d * bs + off, tile.data() + d * n, n * sizeof(float));
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("supported", &supported);
  m.def("paged_attention_rows", &paged_attention_rows, "paged attention per query row, head-major cache (CPU, fp32)",
        py::call_guard<py::gil_scoped_release>());
  m.def("write_kv_rows", &write_kv_rows, "write this step's K/V rows into the head-major cache (CPU, fp32)",
        py::call_guard<py::gil_scoped_release>());
}
