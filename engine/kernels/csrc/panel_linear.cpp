// fp32 linear layer for x86 CPUs with AVX-512, the weight packed once at load time into 16-column
// panels: [ceil(N/16), K, 16], so that one 64-byte load gives the 16 output columns' weights for one
// input feature, and a panel streams from memory sequentially.
//
// Why not oneDNN: at decode batch sizes (M = 1..64 rows) a step reads every weight once and does little
// arithmetic per byte. oneDNN's fp32 GEMM with a pre-reordered weight spends 1.2-2.3x longer than this
// loop there (SmolLM2-135M's projections on the 2-core EPYC dev machine), and from 256 rows on the two
// are level. The micro-kernel keeps 8 rows x 3 panels = 24 zmm accumulators, so each weight load feeds 8
// FMAs and each broadcast input feeds 3, which is enough to reach the FMA unit's rate at 64 rows while
// reading the weights only once per 8 rows.
//
// A weight that is exactly a 4-bit block-affine code (affine4_codec.h: the default model's, dequantized
// from Q4_1) can also be read in that code: the micro-kernel decodes it in registers to the same bits the
// fp32 panels hold (panel_tile.h), by one panel and 16 rows a tile. That reads a sixth of the bytes, which
// is what a step of few rows is bound by; with more rows the decoding costs more than the bytes saved, and
// the fp32 panels, reused from cache by every 8-row tile, are faster. The caller picks (cpu_linear.py).
//
// Every output element is one FMA chain over k = 0..K-1 in order, started from zero, whatever the number
// of rows, the micro-kernel's row count or the thread split: a row's result is bit-identical however
// it is batched (decode alone or in a batch, prefill chunked or not, speculative verification or not).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstdint>
#include <optional>

#include "affine4_codec.h"
#include "panel_tile.h"
#include "softmax.h"  // before fp-contract goes off, as in elementwise.cpp: the same bits

#pragma GCC optimize("fp-contract=off")

#include "activation.h"  // silu_mul8

namespace {

constexpr int kPanelsPerTile = 3;
constexpr int kRowsPerTile = 8;
// the gated GEMM: two (gate, up) panel pairs by six rows, 24 accumulators as the plain tile has
constexpr int kPairsPerTile = 2;
constexpr int kGatedRows = 6;

#ifdef TESSERA_PANEL_AVX512
// silu(g) * u on 16 lanes, as two halves of the elementwise kernel's 8-lane code (the same bits)
inline __m512 silu_mul16(__m512 g, __m512 u) {
  const __m256 lo = silu_mul8(_mm512_castps512_ps256(g), _mm512_castps512_ps256(u));
  const __m256 hi = silu_mul8(_mm512_extractf32x8_ps(g, 1), _mm512_extractf32x8_ps(u, 1));
  return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}

// C[r, t*16 + j] = acc[r][t][j] (+ bias); the last panel stores only the columns in `last_mask`
struct Store {
  const float* bias;
  float* C;
  int64_t ldc;
  __mmask16 last_mask;

  template <int MR, int T>
  void store(__m512 (&acc)[MR][T]) const {
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __mmask16 m = t == T - 1 ? last_mask : static_cast<__mmask16>(0xFFFF);
      const __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + t * kPanel) : _mm512_setzero_ps();
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) _mm512_mask_storeu_ps(C + r * ldc + t * kPanel, m, _mm512_add_ps(acc[r][t], b));
    }
  }
};

// panels (2i, 2i+1) are (gate, up) of the same 16 outputs: C[r, i*16 + j] = silu(gate) * up, the
// activation of the elementwise kernel (activation.h) applied while the sums are still in registers
struct GatedStore {
  float* C;
  int64_t ldc;
  __mmask16 last_mask;

  template <int MR, int T>
  void store(__m512 (&acc)[MR][T]) const {
    static_assert(T % 2 == 0, "gate and up panels come in pairs");
#pragma GCC unroll 2
    for (int i = 0; i < T / 2; ++i) {
      const __mmask16 m = i == T / 2 - 1 ? last_mask : static_cast<__mmask16>(0xFFFF);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        _mm512_mask_storeu_ps(C + r * ldc + i * kPanel, m, silu_mul16(acc[r][2 * i], acc[r][2 * i + 1]));
      }
    }
  }
};

// Where a tile's weights come from. tile(p0, np): what panel_rows reads for panels p0..p0+np-1 (valid
// until the thread's next tile() call), panel(w, p): panel p of such a tile; start/lines: the bytes of
// panels from p, for the next-tile prefetch; steps(K): the k-loop length a prefetch is spread over.
struct Fp32Panels {
  const float* W;
  int64_t K;
  const float* tile(int64_t p0, int64_t) const { return W + p0 * K * kPanel; }
  const float* panel(const float* w, int64_t p) const { return w + p * K * kPanel; }
  const void* start(int64_t p) const { return W + p * K * kPanel; }
  int64_t lines(int64_t np) const { return np * K; }
  int64_t steps(int64_t k) const { return k; }
};

// The 4-bit code, decoded in the micro-kernel's registers (panel_tile.h), by one panel and 16 rows a tile:
// a weight's decode is paid once per 16 rows
struct Affine4Fused {
  const uint8_t* P;
  int64_t K;
  int64_t stride() const { return (K / kAffineBlock) * kAffineRecord; }
  Affine4Weights tile(int64_t p0, int64_t) const { return {P + p0 * stride(), stride()}; }
  Affine4Weights panel(Affine4Weights w, int64_t p) const { return {w.P + p * stride(), stride()}; }
  const void* start(int64_t p) const { return P + p * stride(); }
  int64_t lines(int64_t np) const { return np * stride() / 64; }
  int64_t steps(int64_t k) const { return k / 2; }
};

// The gated MLP one panel at a time, for tiles of 16 rows, whose accumulators leave no room for a gate
// and an up panel at once: the gate sums go to a small buffer, then the up panel's epilogue applies the
// activation (the same fp32 sums, stored and reloaded unchanged)
struct GateSums {
  float* sums;  // [16 rows][16]
  template <int MR, int T>
  void store(__m512 (&acc)[MR][T]) const {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) _mm512_storeu_ps(sums + r * kPanel, acc[r][0]);
  }
};

struct GatedFromSums {
  const float* sums;
  float* C;
  int64_t ldc;
  __mmask16 mask;
  template <int MR, int T>
  void store(__m512 (&acc)[MR][T]) const {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      _mm512_mask_storeu_ps(C + r * ldc, mask, silu_mul16(_mm512_loadu_ps(sums + r * kPanel), acc[r][0]));
    }
  }
};
#endif

}  // namespace

bool supported() {
#ifdef TESSERA_PANEL_AVX512
  return true;
#else
  return false;
#endif
}

// weight: [N, K] fp32 -> [ceil(N/16), K, 16], columns past N zero
torch::Tensor pack(torch::Tensor weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kFloat32, "pack: weight must be [N, K] fp32");
  const int64_t N = weight.size(0), K = weight.size(1), panels = (N + kPanel - 1) / kPanel;
  // one copy when N is a multiple of 16 (every projection of the default model), so loading a model
  // never holds a third copy of its largest matrix
  auto padded = weight.contiguous();
  if (N % kPanel) {
    padded = torch::zeros({panels * kPanel, K}, weight.options());
    padded.narrow(0, 0, N).copy_(weight);
  }
  return padded.view({panels, kPanel, K}).transpose(1, 2).contiguous();
}

// packed: pack's [P, K, 16] fp32 or pack_affine4's [P, K/32, 384] uint8 -> (panels, K)
std::pair<int64_t, int64_t> panel_shape(const torch::Tensor& packed) {
  TORCH_CHECK(packed.dim() == 3 && packed.is_contiguous(), "panel linear: packed weight ", packed.sizes(),
              " is not a contiguous [panels, ., .] tensor");
  if (packed.scalar_type() == torch::kUInt8) {
    TORCH_CHECK(packed.size(2) == kAffineRecord, "panel linear: 4-bit packed weight ", packed.sizes());
    return {packed.size(0), packed.size(1) * kAffineBlock};
  }
  TORCH_CHECK(packed.scalar_type() == torch::kFloat32 && packed.size(2) == kPanel, "panel linear: packed weight ",
              packed.sizes(), " ", packed.scalar_type());
  return {packed.size(0), packed.size(1)};
}

// packed -> the fp32 weight [panels * 16, K] it computes with (for tests: equal, bit for bit, to the
// weight it was packed from, padded to whole panels)
torch::Tensor unpack(torch::Tensor packed) {
  TORCH_CHECK(supported(), "panel linear: built without AVX-512");
  const auto [panels, K] = panel_shape(packed);
  if (packed.scalar_type() == torch::kFloat32) return packed.transpose(1, 2).reshape({panels * kPanel, K});
  auto out = torch::empty({panels, K, kPanel}, torch::dtype(torch::kFloat32));
#ifdef TESSERA_PANEL_AVX512
  for (int64_t p = 0; p < panels; ++p)
    affine4_decode_panel(packed.data_ptr<uint8_t>() + p * (K / kAffineBlock) * kAffineRecord, K,
                         out.data_ptr<float>() + p * K * kPanel);
#endif
  return out.transpose(1, 2).reshape({panels * kPanel, K});
}

#ifdef TESSERA_PANEL_AVX512
// x [M, K] fp32 (rows may be strided) -> [ceil(M/16), K, 16]: Packed16A's layout
torch::Tensor packed_rows16(const torch::Tensor& x) {
  const int64_t M = x.size(0), K = x.size(1);
  // the gather's 32-bit offsets reach 15 rows down
  TORCH_CHECK(x.stride(0) <= (int64_t{1} << 31) / 16, "panel linear: row stride ", x.stride(0), " too large");
  auto out = torch::empty({(M + 15) / 16, K, 16}, x.options());
  pack_rows16(x.data_ptr<float>(), x.stride(0), M, K, out.data_ptr<float>());
  return out;
}

// C [M, N] = A [M, K] x the panels' weights (+ bias), in tiles of T panels by MR rows
template <int MR, int T, class Source, class AOp>
void linear_tiles(const AOp& A, int64_t M, const Source& src, int64_t panels, int64_t K, const float* B, float* C,
                  int64_t N) {
  const int64_t tiles = (panels + T - 1) / T;
  const int tail = static_cast<int>(N - (panels - 1) * kPanel);
  const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail) - 1u);
  // threads split the output columns, so each streams its own contiguous part of the weight; the rows
  // of one tile of panels are swept while its weights are still in cache
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p0 = t * T, np = std::min<int64_t>(T, panels - p0);
      const bool last = p0 + np == panels;
      // with few rows, this thread's next tile is fetched while this one is computed (tile_prefetch.h)
      const NextTile next(t + 1 < t1, src.start(p0 + np), src.lines(std::min<int64_t>(T, panels - p0 - np)), M, MR);
      const auto w = src.tile(p0, np);
      for (int64_t m = 0, i = 0; m < M; m += MR, ++i) {
        const int mr = static_cast<int>(std::min<int64_t>(MR, M - m));
        const AOp a = A.rows_from(m);
        float* c = C + m * N + p0 * kPanel;
        const float* b = B ? B + p0 * kPanel : nullptr;
        if (np == T) {
          Store st{b, c, N, last ? tail_mask : static_cast<__mmask16>(0xFFFF)};
          panel_rows<MR, T>(mr, a, w, K, st, next.share(i, src.steps(K)));
        } else {
          for (int64_t p = 0; p < np; ++p) {
            const bool last_panel = last && p == np - 1;
            Store st{b ? b + p * kPanel : nullptr, c + p * kPanel, N,
                     last_panel ? tail_mask : static_cast<__mmask16>(0xFFFF)};
            panel_rows<MR, 1>(mr, a, src.panel(w, p), K, st);
          }
        }
      }
    }
  });
}

// C [M, I] = silu(A Wg^T) * (A Wu^T), the panels in (gate, up) pairs, tiles of two pairs by six rows
template <class Source, class AOp>
void gated_tiles(const AOp& A, int64_t M, const Source& src, int64_t pairs, int64_t K, float* C, int64_t I) {
  const int64_t tiles = (pairs + kPairsPerTile - 1) / kPairsPerTile;
  const int tail = static_cast<int>(I - (pairs - 1) * kPanel);
  const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail) - 1u);
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t q0 = t * kPairsPerTile, nq = std::min<int64_t>(kPairsPerTile, pairs - q0);
      const __mmask16 last = q0 + nq == pairs ? tail_mask : static_cast<__mmask16>(0xFFFF);
      const NextTile next(t + 1 < t1, src.start(2 * (q0 + nq)),
                          src.lines(2 * std::min<int64_t>(kPairsPerTile, pairs - q0 - nq)), M, kGatedRows);
      const auto w = src.tile(2 * q0, 2 * nq);
      for (int64_t m = 0, i = 0; m < M; m += kGatedRows, ++i) {
        const int mr = static_cast<int>(std::min<int64_t>(kGatedRows, M - m));
        GatedStore st{C + m * I + q0 * kPanel, I, last};
        if (nq == kPairsPerTile) {
          panel_rows<kGatedRows, 2 * kPairsPerTile>(mr, A.rows_from(m), w, K, st, next.share(i, src.steps(K)));
        } else {
          panel_rows<kGatedRows, 2>(mr, A.rows_from(m), w, K, st);
        }
      }
    }
  });
}

// the same by one (gate, up) pair and 16 rows a tile (GateSums, GatedFromSums)
template <class Source, class AOp>
void gated_pairs(const AOp& A, int64_t M, const Source& src, int64_t pairs, int64_t K, float* C, int64_t I) {
  const int tail = static_cast<int>(I - (pairs - 1) * kPanel);
  const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail) - 1u);
  at::parallel_for(0, pairs, 1, [&](int64_t q0, int64_t q1) {
    alignas(64) float sums[16 * kPanel];
    for (int64_t q = q0; q < q1; ++q) {
      const NextTile next(q + 1 < q1, src.start(2 * q + 2), src.lines(2), M, 16);
      const auto w = src.tile(2 * q, 2);
      const __mmask16 mask = q + 1 == pairs ? tail_mask : static_cast<__mmask16>(0xFFFF);
      for (int64_t m = 0, i = 0; m < M; m += 16, ++i) {
        const int mr = static_cast<int>(std::min<int64_t>(16, M - m));
        GateSums gs{sums};
        panel_rows<16, 1>(mr, A.rows_from(m), src.panel(w, 0), K, gs, next.share(i, src.steps(K)));
        GatedFromSums st{sums, C + m * I + q * kPanel, I, mask};
        panel_rows<16, 1>(mr, A.rows_from(m), src.panel(w, 1), K, st);
      }
    }
  });
}
#endif

// x: [M, K] fp32 (rows may be strided), packed: pack's or pack_affine4's, bias: [N] or empty -> [M, N]
torch::Tensor linear(torch::Tensor x, torch::Tensor packed, std::optional<torch::Tensor> bias_opt, int64_t N) {
  TORCH_CHECK(supported(), "panel linear: built without AVX-512");
  const auto [panels, K] = panel_shape(packed);
  TORCH_CHECK((N + kPanel - 1) / kPanel == panels, "panel linear: packed weight ", packed.sizes(),
              " does not hold ", N, " outputs");
  // ValueError in Python: a caller's mistake, reported with what the layer takes
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == K && x.scalar_type() == torch::kFloat32, "panel linear (", K,
                    " -> ", N, ") takes [T, ", K, "] fp32, got ", x.sizes(), " ", x.scalar_type());
  if (x.stride(1) != 1) x = x.contiguous();
  const int64_t M = x.size(0);
  const torch::Tensor bias = bias_opt.has_value() ? bias_opt->contiguous() : torch::Tensor();
  TORCH_CHECK(!bias.defined() || (bias.numel() == N && bias.scalar_type() == torch::kFloat32),
              "panel linear: bias must be ", N, " fp32 elements");
  auto out = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
#ifdef TESSERA_PANEL_AVX512
  const float* A = x.data_ptr<float>();
  const float* B = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* C = out.data_ptr<float>();
  if (packed.scalar_type() == torch::kUInt8) {
    const auto rows = packed_rows16(x);
    linear_tiles<16, 1>(Packed16A{rows.data_ptr<float>(), K}, M, Affine4Fused{packed.data_ptr<uint8_t>(), K}, panels,
                        K, B, C, N);
  } else {
    linear_tiles<kRowsPerTile, kPanelsPerTile>(RowMajorA{A, x.stride(0)}, M, Fp32Panels{packed.data_ptr<float>(), K},
                                               panels, K, B, C, N);
  }
#endif
  return out;
}

// weight: [2I, K] fp32 laid out [gate | up] -> gate panel i, then up panel i: [2 ceil(I/16), K, 16] fp32
// with `affine4` false; with it true the same panels in pack_affine4's code, or None when either half is
// not such a code
std::optional<torch::Tensor> pack_gated_as(torch::Tensor weight, bool affine4) {
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) % 2 == 0 && weight.scalar_type() == torch::kFloat32,
              "pack_gated: weight must be [2I, K] fp32");
  const int64_t I = weight.size(0) / 2;
  torch::Tensor gate, up;
  if (affine4) {
    auto g = affine4_encode(weight.narrow(0, 0, I));
    auto u = g ? affine4_encode(weight.narrow(0, I, I)) : std::nullopt;
    if (!u) return std::nullopt;
    gate = *g;
    up = *u;
  } else {
    gate = pack(weight.narrow(0, 0, I));
    up = pack(weight.narrow(0, I, I));
  }
  auto pairs = torch::stack({gate, up}, 1);
  return pairs.view({2 * gate.size(0), gate.size(1), gate.size(2)});
}

torch::Tensor pack_gated(torch::Tensor weight) { return *pack_gated_as(weight, false); }
std::optional<torch::Tensor> pack_gated_affine4(torch::Tensor weight) { return pack_gated_as(weight, true); }

// x: [M, K] fp32 (rows may be strided), packed: pack_gated's or pack_gated_affine4's -> silu(x Wg^T) * (x Wu^T):
// [M, I]. Each gate and up sum is the plain linear's FMA chain, so only the activation's placement changes.
torch::Tensor gated_linear(torch::Tensor x, torch::Tensor packed, int64_t I) {
  TORCH_CHECK(supported(), "panel linear: built without AVX-512");
  const int64_t pairs = (I + kPanel - 1) / kPanel;
  const auto [panels, K] = panel_shape(packed);
  TORCH_CHECK(panels == 2 * pairs, "gated linear: packed weight ", packed.sizes(), " does not hold ", I,
              " gated outputs");
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == K && x.scalar_type() == torch::kFloat32, "gated linear (", K,
                    " -> ", I, ") takes [T, ", K, "] fp32, got ", x.sizes(), " ", x.scalar_type());
  if (x.stride(1) != 1) x = x.contiguous();
  const int64_t M = x.size(0);
  auto out = torch::empty({M, I}, x.options());
  if (M == 0 || I == 0) return out;
#ifdef TESSERA_PANEL_AVX512
  const float* A = x.data_ptr<float>();
  float* C = out.data_ptr<float>();
  if (packed.scalar_type() == torch::kUInt8) {
    const auto rows = packed_rows16(x);
    gated_pairs(Packed16A{rows.data_ptr<float>(), K}, M, Affine4Fused{packed.data_ptr<uint8_t>(), K}, pairs, K, C, I);
  } else {
    gated_tiles(RowMajorA{A, x.stride(0)}, M, Fp32Panels{packed.data_ptr<float>(), K}, pairs, K, C, I);
  }
#endif
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("supported", &supported);
  m.def("pack", &pack);
  // weight: [N, K] fp32 -> affine4_codec.h's [ceil(N/16), K/32, 384] uint8 when every block is exactly
  // such a code, else None
  m.def("pack_affine4", &affine4_encode, py::call_guard<py::gil_scoped_release>());
  m.def("unpack", &unpack);
  m.def("linear", &linear, py::arg("x"), py::arg("packed"), py::arg("bias"), py::arg("n"),
        py::call_guard<py::gil_scoped_release>());
  m.def("pack_gated", &pack_gated);
  m.def("pack_gated_affine4", &pack_gated_affine4, py::call_guard<py::gil_scoped_release>());
  m.def("gated_linear", &gated_linear, py::arg("x"), py::arg("packed"), py::arg("i"),
        py::call_guard<py::gil_scoped_release>());
}
