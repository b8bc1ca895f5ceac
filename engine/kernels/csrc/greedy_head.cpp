// Greedy next tokens without the full fp32 LM head, for x86 CPUs with AVX-512 VNNI. The answer is exactly
// the argmax (first maximum) of the logits the fp32 panel GEMM (panel_linear.cpp) would produce; only the
// work to find it changes.
//
// Why: at decode batch sizes the LM head of a small model is its largest matmul (SmolLM2-135M: 28M of its
// 134M weights, every step). An int8 dot product (vpdpbusd: 64 multiply-adds per instruction, issued at
// the same rate as a 16-lane fp32 FMA on Zen 4) screens the vocabulary in about a quarter of the FMA
// work, with a rigorous bound on how far each screened logit can be from the fp32 one; only tokens whose
// bound reaches the best lower bound are recomputed, in fp32, with the panel kernel's own FMA chain.
//
// The screen, per row r and token v:
//   A[r, v] = s_h[r] s_w[v] sum_{j not in O} q_h[r, j] q_w[v, j] + sum_{j in O} h[r, j] W[v, j]
// where O are the few largest-magnitude features of the batch (a model's final hidden state carries a
// handful of "massive activation" features, tens of times the rest: quantizing them with the rest
// would blunt every other feature), kept in fp32; the rest of h is int8 per row, W int8 per token.
//   |A - L| <= |h - h^|_2 |W_v|_2 + |h^|_2 |W_v - W^_v|_2 + F
// (Cauchy-Schwarz on the actual quantization errors of both sides; F covers the rounding of the fp32
// FMA chain of L and of A's own float arithmetic, with a wide margin). With M that bound: every maximum of L has
// A + M >= max_u (A - M), so the candidates {v : A + M >= max_u (A - M)} hold all of them, and the
// first maximum among the candidates' exact logits is the first maximum of the row.
//
// A row goes back to the caller (token -1), which computes its full logits, when its hidden state is not
// finite or its candidates exceed `cap`.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

#include "tile_prefetch.h"

#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define TESSERA_GREEDY_VNNI 1
#endif

namespace {

constexpr int64_t kLanes = 16;
constexpr int kPanelsPerTile = 3;
constexpr int kRowsPerTile = 8;
// token statistics, one row of P*16 floats each (see pack in engine/kernels/cpu_greedy_head.py)
enum Stat { kScale = 0, kL2, kErr2, kNumStats };

struct RowStats {
  float scale;   // s_h
  float alpha;   // |h - s_h q|_2 + slack: the factor of |W_v|_2 in the bound
  float beta;    // |s_h q|_2 + slack: the factor of |W_v - W^_v|_2
  int32_t init;  // -128 sum(q): removes the +128 offset of the unsigned weights
  bool ok;
};

struct Record {
  int32_t row;
  int32_t panel;
  float hi[kLanes];
};

float round_up(double x) {
  float f = static_cast<float>(x * (1.0 + 1e-6));
  return std::nextafter(f, std::numeric_limits<float>::infinity());
}

#ifdef TESSERA_GREEDY_VNNI
// acc += (four unsigned bytes of w) . (the four signed bytes at h4, broadcast), per 32-bit lane. Written
// in assembly: GCC 12 compiles _mm512_dpbusd_epi32 in this loop with a register copy (and, for the
// 8 x 3 tile, stack spills) around every instruction, which more than doubled the loop's time.
inline void dpbusd_bcast(__m512i& acc, __m512i w, const int8_t* h4) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*reinterpret_cast<const int32_t*>(h4)));
}

struct Shared {
  const int8_t* qh;      // [R, D4*4]
  const RowStats* rows;
  const float* h;        // [R, D]
  int64_t ldh, D, D4, V;
  const uint8_t* wq;     // [P, D4, 16, 4]
  const float* wf;       // [P, D, 16]
  const float* stats;    // [kNumStats, P*16]
  int64_t ntok;          // P*16
  const int64_t* outl;   // [n_out] feature indices kept in fp32
  const float* hout;     // [R, n_out] those features' values
  int64_t n_out;
};

// one tile: MR rows x T panels from panel p. lb: this thread's running lower bound per row; panels with a
// lane whose upper bound reaches it are recorded.
// Records go to a buffer with room for a whole tile, made before the tile runs: a possible push_back in
// the loop made GCC keep the accumulators in memory (measured: the screen took twice as long).
struct Records {
  Record* buf;
  int64_t n;
};

// meanwhile `pf` fetches the thread's next tile of weights (tile_prefetch.h)
template <int MR, int T>
void screen_tile(const Shared& s, int64_t r0, int64_t p, float* lb, Records& out, PrefetchSpread pf) {
  __m512i acc[MR][T];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    const __m512i init = _mm512_set1_epi32(s.rows[r0 + r].init);
#pragma GCC unroll 3
    for (int t = 0; t < T; ++t) acc[r][t] = init;
  }
  const uint8_t* w0 = s.wq + p * s.D4 * 64;
  const int8_t* q0 = s.qh + r0 * s.D4 * 4;
  const int64_t D4 = s.D4;
  for_each_k(D4, pf, [&](int64_t k) __attribute__((always_inline)) {
    __m512i w[T];
#pragma GCC unroll 3
    for (int t = 0; t < T; ++t) w[t] = _mm512_loadu_si512(w0 + (t * D4 + k) * 64);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 3
      for (int t = 0; t < T; ++t) dpbusd_bcast(acc[r][t], w[t], q0 + r * D4 * 4 + k * 4);
    }
  });
  // the screened logits: the int8 part scaled, then the fp32 features, one FMA each for every (row,
  // panel) the way the panel GEMM's micro-kernel runs (each weight vector loaded once for all rows)
  __m512 a[MR][T];
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t) {
    const __m512 sw = _mm512_loadu_ps(s.stats + kScale * s.ntok + (p + t) * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
      a[r][t] = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][t]), sw), _mm512_set1_ps(s.rows[r0 + r].scale));
  }
  for (int64_t o = 0; o < s.n_out; ++o) {
    __m512 w[T];
#pragma GCC unroll 3
    for (int t = 0; t < T; ++t) w[t] = _mm512_loadu_ps(s.wf + ((p + t) * s.D + s.outl[o]) * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 h = _mm512_set1_ps(s.hout[(r0 + r) * s.n_out + o]);
#pragma GCC unroll 3
      for (int t = 0; t < T; ++t) a[r][t] = _mm512_fmadd_ps(h, w[t], a[r][t]);
    }
  }
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 lbv[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) lbv[r] = ninf;
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t) {
    const int64_t tok0 = (p + t) * kLanes;
    const float* st = s.stats + tok0;
    const __m512 l2w = _mm512_loadu_ps(st + kL2 * s.ntok), e2w = _mm512_loadu_ps(st + kErr2 * s.ntok);
    const int64_t valid = std::min<int64_t>(kLanes, s.V - tok0);
    const __mmask16 live = valid >= kLanes ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << valid) - 1u);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const RowStats& rs = s.rows[r0 + r];
      const __m512 m = _mm512_fmadd_ps(_mm512_set1_ps(rs.beta), e2w, _mm512_mul_ps(_mm512_set1_ps(rs.alpha), l2w));
      const __m512 lo = _mm512_mask_sub_ps(ninf, live, a[r][t], m);
      const __m512 hi = _mm512_mask_add_ps(ninf, live, a[r][t], m);
      lbv[r] = _mm512_max_ps(lbv[r], lo);
      if (_mm512_cmp_ps_mask(hi, _mm512_set1_ps(lb[r0 + r]), _CMP_GE_OQ)) {
        Record& rec = out.buf[out.n++];
        rec.row = static_cast<int32_t>(r0 + r);
        rec.panel = static_cast<int32_t>(p + t);
        _mm512_storeu_ps(rec.hi, hi);
      }
    }
  }
  // the bound moves once per tile: a lane of this tile whose upper bound falls short of a lower bound in
  // the same tile was recorded needlessly, never wrongly
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) lb[r0 + r] = std::max(lb[r0 + r], _mm512_reduce_max_ps(lbv[r]));
}

template <int T>
void screen_rows(const Shared& s, int mr, int64_t r0, int64_t p, float* lb, Records& out, PrefetchSpread pf = {}) {
  switch (mr) {
    case 1: screen_tile<1, T>(s, r0, p, lb, out, pf); break;
    case 2: screen_tile<2, T>(s, r0, p, lb, out, pf); break;
    case 3: screen_tile<3, T>(s, r0, p, lb, out, pf); break;
    case 4: screen_tile<4, T>(s, r0, p, lb, out, pf); break;
    case 5: screen_tile<5, T>(s, r0, p, lb, out, pf); break;
    case 6: screen_tile<6, T>(s, r0, p, lb, out, pf); break;
    case 7: screen_tile<7, T>(s, r0, p, lb, out, pf); break;
    default: screen_tile<8, T>(s, r0, p, lb, out, pf); break;
  }
}
#endif

// The panel kernel's logits of tokens v[0..n) for row h: per token one FMA chain over k in order, from
// zero, plus the zero bias, as panel_linear.cpp computes every output (so the values are bit-identical).
// Eight chains run side by side: one chain alone waits on the FMA latency at every step.
void exact_logits(const float* h, const float* w, int64_t D, const int64_t* v, int64_t n, float* out) {
  constexpr int kChains = 8;
  for (int64_t i0 = 0; i0 < n; i0 += kChains) {
    const int m = static_cast<int>(std::min<int64_t>(kChains, n - i0));
    const float* rows[kChains];
    float acc[kChains];
    for (int c = 0; c < kChains; ++c) {
      rows[c] = w + v[i0 + std::min(c, m - 1)] * D;
      acc[c] = 0.f;
    }
    for (int64_t k = 0; k < D; ++k) {
      const float x = h[k];
#pragma GCC unroll 8
      for (int c = 0; c < kChains; ++c) acc[c] = std::fma(x, rows[c][k], acc[c]);
    }
    for (int c = 0; c < m; ++c) out[i0 + c] = acc[c] + 0.f;
  }
}

}  // namespace

// weight: [V, D] fp32 -> (int8 pack [P, D4, 16, 4] uint8, each value q + 128 with q = round(W / s_v) in
// [-127, 127], s_v = max_j |W[v, j]| / 127; statistics [3, P*16] fp32: s_v, |W_v|_2 and |W_v - s_v q_v|_2,
// the norms worked out in double and rounded up). Padded tokens and features are zero (q = 0).
std::vector<torch::Tensor> pack(torch::Tensor weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kFloat32, "greedy head: weight must be [V, D] fp32");
  weight = weight.contiguous();
  const int64_t V = weight.size(0), D = weight.size(1), P = (V + kLanes - 1) / kLanes, D4 = (D + 3) / 4;
  auto packed = torch::full({P, D4, kLanes, 4}, 128, torch::kUInt8);
  auto stats = torch::zeros({kNumStats, P * kLanes}, torch::kFloat32);
  const float* w = weight.data_ptr<float>();
  uint8_t* q = packed.data_ptr<uint8_t>();
  float* st = stats.data_ptr<float>();
  at::parallel_for(0, V, 256, [&](int64_t v0, int64_t v1) {
    for (int64_t v = v0; v < v1; ++v) {
      const float* row = w + v * D;
      float amax = 0.f;
      for (int64_t j = 0; j < D; ++j) amax = std::max(amax, std::fabs(row[j]));
      const float scale = amax > 0.f ? amax / 127.f : 1.f;
      double l2 = 0.0, e2 = 0.0;
      const int64_t p = v / kLanes, lane = v % kLanes;
      for (int64_t j = 0; j < D; ++j) {
        const int qi = static_cast<int>(std::max(-127.f, std::min(127.f, std::nearbyint(row[j] / scale))));
        q[((p * D4 + j / 4) * kLanes + lane) * 4 + j % 4] = static_cast<uint8_t>(qi + 128);
        const double x = row[j], e = x - static_cast<double>(qi) * scale;
        l2 += x * x;
        e2 += e * e;
      }
      st[kScale * P * kLanes + v] = scale;
      st[kL2 * P * kLanes + v] = round_up(std::sqrt(l2));
      st[kErr2 * P * kLanes + v] = round_up(std::sqrt(e2));
    }
  });
  return {packed, stats};
}

bool supported() {
#ifdef TESSERA_GREEDY_VNNI
  return true;
#else
  return false;
#endif
}

// h: [R, D] fp32 rows (contiguous within a row); wq: [P, D4, 16, 4] uint8; wf: [P, D, 16] fp32 (the panel
// kernel's packed weight); w: [V, D] fp32 row-major (the same weight); stats: [6, P*16] fp32;
// n_out: features kept in fp32; cap: most candidates per row before it is handed back.
// -> [R] int64: the greedy token, or -1 where the caller must compute the row's full logits.
torch::Tensor greedy_tokens(torch::Tensor h, torch::Tensor wq, torch::Tensor wf, torch::Tensor w, torch::Tensor stats,
                            int64_t n_out, int64_t cap) {
  TORCH_CHECK(supported(), "greedy head: built without AVX-512 VNNI");
  TORCH_CHECK_VALUE(h.dim() == 2 && h.scalar_type() == torch::kFloat32, "greedy head takes [R, D] fp32, got ",
                    h.sizes(), " ", h.scalar_type());
  if (h.stride(1) != 1) h = h.contiguous();
  const int64_t R = h.size(0), D = h.size(1), V = w.size(0), P = wq.size(0), D4 = wq.size(1);
  TORCH_CHECK(w.dim() == 2 && w.size(1) == D && w.is_contiguous() && w.scalar_type() == torch::kFloat32,
              "greedy head: weight must be [V, ", D, "] fp32 contiguous");
  TORCH_CHECK(wq.dim() == 4 && wq.size(2) == kLanes && wq.size(3) == 4 && wq.is_contiguous() &&
                  wq.scalar_type() == torch::kUInt8 && D4 * 4 >= D && (D4 - 1) * 4 < D && P * kLanes >= V,
              "greedy head: bad int8 pack ", wq.sizes());
  TORCH_CHECK(wf.dim() == 3 && wf.size(0) == P && wf.size(1) == D && wf.size(2) == kLanes && wf.is_contiguous(),
              "greedy head: bad fp32 pack ", wf.sizes());
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == kNumStats && stats.size(1) == P * kLanes && stats.is_contiguous(),
              "greedy head: bad token statistics ", stats.sizes());
  auto tokens = torch::full({R}, -1, torch::kInt64);
  if (R == 0) return tokens;
#ifdef TESSERA_GREEDY_VNNI
  const float* hp = h.data_ptr<float>();
  const int64_t ldh = h.stride(0);
  n_out = std::max<int64_t>(0, std::min(n_out, D));
  // the batch's largest features by magnitude stay in fp32
  std::vector<float> colmax(D, 0.f);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < D; ++j) colmax[j] = std::max(colmax[j], std::fabs(hp[r * ldh + j]));
  std::vector<int64_t> order(D);
  for (int64_t j = 0; j < D; ++j) order[j] = j;
  std::partial_sort(order.begin(), order.begin() + n_out, order.end(),
                    [&](int64_t a, int64_t b) { return colmax[a] > colmax[b] || (colmax[a] == colmax[b] && a < b); });
  std::vector<int64_t> outl(order.begin(), order.begin() + n_out);
  std::sort(outl.begin(), outl.end());
  std::vector<char> is_out(D, 0);
  for (int64_t j : outl) is_out[j] = 1;

  // rows to int8, with their error statistics (in double, then rounded up)
  const double cf = 4.0 * static_cast<double>(D + n_out + 64) * std::ldexp(1.0, -24);
  std::vector<int8_t> qh(R * D4 * 4, 0);
  std::vector<RowStats> rows(R);
  std::vector<float> hout(R * n_out);
  for (int64_t r = 0; r < R; ++r) {
    const float* x = hp + r * ldh;
    RowStats& rs = rows[r];
    double norm2 = 0.0;
    float amax = 0.f;
    bool finite = true;
    for (int64_t j = 0; j < D; ++j) {
      finite = finite && std::isfinite(x[j]);
      norm2 += static_cast<double>(x[j]) * x[j];
      if (!is_out[j]) amax = std::max(amax, std::fabs(x[j]));
    }
    rs.ok = finite && std::sqrt(norm2) < 1e30;
    if (!rs.ok) continue;
    rs.scale = amax > 0.f ? amax / 127.f : 1.f;
    double e2 = 0.0, l2 = 0.0;
    int64_t qsum = 0;
    for (int64_t j = 0; j < D; ++j) {
      if (is_out[j]) continue;
      const float qf = std::nearbyint(x[j] / rs.scale);
      const int q = static_cast<int>(std::max(-127.f, std::min(127.f, qf)));
      qh[r * D4 * 4 + j] = static_cast<int8_t>(q);
      qsum += q;
      const double hat = static_cast<double>(q) * rs.scale, e = static_cast<double>(x[j]) - hat;
      e2 += e * e;
      l2 += hat * hat;
    }
    const double slack = cf * (std::sqrt(norm2) + std::sqrt(e2));
    rs.alpha = round_up(std::sqrt(e2) + slack);
    rs.beta = round_up(std::sqrt(l2) + slack);
    for (int64_t o = 0; o < n_out; ++o) hout[r * n_out + o] = x[outl[o]];
    rs.init = static_cast<int32_t>(-128 * qsum);
  }

  Shared s{qh.data(), rows.data(), hp, ldh, D, D4, V, wq.data_ptr<uint8_t>(), wf.data_ptr<float>(),
           stats.data_ptr<float>(), P * kLanes, outl.data(), hout.data(), n_out};
  // Rows that are not ok screen with zeros and are handed back below; their records are ignored. The
  // first tiles (the tokenizer's most frequent tokens) are screened first, so that every thread starts the
  // rest with a lower bound near the row's best: a thread starting from -inf records most of what it sees.
  std::vector<float> lb(R, -std::numeric_limits<float>::infinity());
  std::vector<Record> records;
  std::mutex merge;
  const int64_t tiles = (P + kPanelsPerTile - 1) / kPanelsPerTile;
  auto screen = [&](int64_t first, int64_t last) {
    const std::vector<float> start = lb;
    at::parallel_for(first, last, 1, [&](int64_t t0, int64_t t1) {
      std::vector<float> my_lb = start;
      std::vector<Record> buf(static_cast<size_t>(16 * R + 1024));
      Records mine{buf.data(), 0};
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t p0 = t * kPanelsPerTile, np = std::min<int64_t>(kPanelsPerTile, P - p0);
        // few rows: the next tile's weights are fetched while this one is screened (tile_prefetch.h)
        const NextTile next(t + 1 < t1, s.wq + (p0 + np) * D4 * 64,
                            std::min<int64_t>(kPanelsPerTile, P - p0 - np) * D4, R, kRowsPerTile);
        for (int64_t m = 0, i = 0; m < R; m += kRowsPerTile, ++i) {
          const int mr = static_cast<int>(std::min<int64_t>(kRowsPerTile, R - m));
          if (mine.n + kRowsPerTile * kPanelsPerTile > static_cast<int64_t>(buf.size())) {
            buf.resize(2 * buf.size());
            mine.buf = buf.data();
          }
          if (np == kPanelsPerTile) {
            screen_rows<kPanelsPerTile>(s, mr, m, p0, my_lb.data(), mine, next.share(i, D4));
          } else {
            for (int64_t q = 0; q < np; ++q) screen_rows<1>(s, mr, m, p0 + q, my_lb.data(), mine);
          }
        }
      }
      std::lock_guard<std::mutex> g(merge);
      for (int64_t r = 0; r < R; ++r) lb[r] = std::max(lb[r], my_lb[r]);
      records.insert(records.end(), buf.begin(), buf.begin() + mine.n);
    });
  };
  const int64_t head_tiles = std::min<int64_t>(tiles, std::max<int64_t>(2, tiles / 16));
  screen(0, head_tiles);
  screen(head_tiles, tiles);

  // candidates per row, then their exact logits
  std::vector<std::vector<int64_t>> cand(R);
  for (const Record& rec : records) {
    const int64_t r = rec.row;
    if (!rows[r].ok || static_cast<int64_t>(cand[r].size()) > cap) continue;
    for (int64_t i = 0; i < kLanes; ++i)
      if (rec.hi[i] >= lb[r]) cand[r].push_back(rec.panel * kLanes + i);
  }
  const float* wp = w.data_ptr<float>();
  int64_t* out = tokens.data_ptr<int64_t>();
  at::parallel_for(0, R, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      auto& c = cand[r];
      if (!rows[r].ok || c.empty() || static_cast<int64_t>(c.size()) > cap) continue;
      std::sort(c.begin(), c.end());
      std::vector<float> logit(c.size());
      exact_logits(hp + r * ldh, wp, D, c.data(), static_cast<int64_t>(c.size()), logit.data());
      int64_t best = 0;  // the first maximum, as torch.argmax: later ties never replace it
      for (size_t i = 1; i < c.size(); ++i)
        if (logit[i] > logit[best]) best = static_cast<int64_t>(i);
      out[r] = c[best];
    }
  });
#endif
  return tokens;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("supported", &supported);
  m.def("pack", &pack, py::call_guard<py::gil_scoped_release>());
  m.def("greedy_tokens", &greedy_tokens, py::arg("h"), py::arg("wq"), py::arg("wf"), py::arg("w"), py::arg("stats"),
        py::arg("n_out"), py::arg("cap"), py::call_guard<py::gil_scoped_release>());
}
