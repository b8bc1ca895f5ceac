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
// Every output element is one FMA chain over k = 0..K-1 in order, started from zero, whatever the number
// of rows, the micro-kernel's row count or the thread split: a row's result is bit-identical however
// it is batched (decode alone or in a batch, prefill chunked or not, speculative verification or not).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstdint>
#include <optional>

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
        const __m512 g = acc[r][2 * i], u = acc[r][2 * i + 1];
        const __m256 lo = silu_mul8(_mm512_castps512_ps256(g), _mm512_castps512_ps256(u));
        const __m256 hi = silu_mul8(_mm512_extractf32x8_ps(g, 1), _mm512_extractf32x8_ps(u, 1));
        _mm512_mask_storeu_ps(C + r * ldc + i * kPanel, m, _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1));
      }
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

// x: [M, K] fp32 (rows may be strided), packed: [ceil(N/16), K, 16], bias: [N] or empty -> [M, N]
torch::Tensor linear(torch::Tensor x, torch::Tensor packed, std::optional<torch::Tensor> bias_opt, int64_t N) {
  TORCH_CHECK(supported(), "panel linear: built without AVX-512");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kPanel && packed.is_contiguous() &&
                  (N + kPanel - 1) / kPanel == packed.size(0),
              "panel linear: packed weight ", packed.sizes(), " does not hold ", N, " outputs");
  const int64_t panels = packed.size(0), K = packed.size(1);
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
  const float* W = packed.data_ptr<float>();
  const float* B = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* C = out.data_ptr<float>();
  const int64_t lda = x.stride(0), tiles = (panels + kPanelsPerTile - 1) / kPanelsPerTile;
  const int tail = static_cast<int>(N - (panels - 1) * kPanel);
  const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail) - 1u);
  // threads split the output columns, so each streams its own contiguous part of the weight; the rows
  // of one tile of panels are swept while its weights are still in cache
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p0 = t * kPanelsPerTile, np = std::min<int64_t>(kPanelsPerTile, panels - p0);
      const bool last = p0 + np == panels;
      // with few rows, this thread's next tile is fetched while this one is computed (tile_prefetch.h)
      const NextTile next(t + 1 < t1, W + (p0 + np) * K * kPanel,
                          std::min<int64_t>(kPanelsPerTile, panels - p0 - np) * K, M, kRowsPerTile);
      for (int64_t m = 0, i = 0; m < M; m += kRowsPerTile, ++i) {
        const int mr = static_cast<int>(std::min<int64_t>(kRowsPerTile, M - m));
        const float* a = A + m * lda;
        float* c = C + m * N + p0 * kPanel;
        const float* w = W + p0 * K * kPanel;
        const float* b = B ? B + p0 * kPanel : nullptr;
        if (np == kPanelsPerTile) {
          Store st{b, c, N, last ? tail_mask : static_cast<__mmask16>(0xFFFF)};
          panel_rows<kRowsPerTile, kPanelsPerTile>(mr, a, lda, w, K, st, next.share(i, K));
        } else {
          for (int64_t p = 0; p < np; ++p) {
            const bool last_panel = last && p == np - 1;
            Store st{b ? b + p * kPanel : nullptr, c + p * kPanel, N,
                     last_panel ? tail_mask : static_cast<__mmask16>(0xFFFF)};
            panel_rows<kRowsPerTile, 1>(mr, a, lda, w + p * K * kPanel, K, st);
          }
        }
      }
    }
  });
#endif
  return out;
}

// weight: [2I, K] fp32 laid out [gate | up] -> [2 ceil(I/16), K, 16]: gate panel i, then up panel i
torch::Tensor pack_gated(torch::Tensor weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) % 2 == 0 && weight.scalar_type() == torch::kFloat32,
              "pack_gated: weight must be [2I, K] fp32");
  const int64_t I = weight.size(0) / 2, K = weight.size(1), pairs = (I + kPanel - 1) / kPanel;
  auto gate = pack(weight.narrow(0, 0, I)), up = pack(weight.narrow(0, I, I));
  return torch::stack({gate, up}, 1).view({2 * pairs, K, kPanel});
}

// x: [M, K] fp32 (rows may be strided), packed: pack_gated's [2 ceil(I/16), K, 16] -> silu(x Wg^T) * (x Wu^T):
// [M, I]. Each gate and up sum is the plain linear's FMA chain, so only the activation's placement changes.
torch::Tensor gated_linear(torch::Tensor x, torch::Tensor packed, int64_t I) {
  TORCH_CHECK(supported(), "panel linear: built without AVX-512");
  const int64_t pairs = (I + kPanel - 1) / kPanel;
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kPanel && packed.is_contiguous() && packed.size(0) == 2 * pairs,
              "gated linear: packed weight ", packed.sizes(), " does not hold ", I, " gated outputs");
  const int64_t K = packed.size(1);
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == K && x.scalar_type() == torch::kFloat32, "gated linear (", K,
                    " -> ", I, ") takes [T, ", K, "] fp32, got ", x.sizes(), " ", x.scalar_type());
  if (x.stride(1) != 1) x = x.contiguous();
  const int64_t M = x.size(0);
  auto out = torch::empty({M, I}, x.options());
  if (M == 0 || I == 0) return out;
#ifdef TESSERA_PANEL_AVX512
  const float* A = x.data_ptr<float>();
  const float* W = packed.data_ptr<float>();
  float* C = out.data_ptr<float>();
  const int64_t lda = x.stride(0), tiles = (pairs + kPairsPerTile - 1) / kPairsPerTile;
  const int tail = static_cast<int>(I - (pairs - 1) * kPanel);
  const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail) - 1u);
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t q0 = t * kPairsPerTile, nq = std::min<int64_t>(kPairsPerTile, pairs - q0);
      const __mmask16 last = q0 + nq == pairs ? tail_mask : static_cast<__mmask16>(0xFFFF);
      const NextTile next(t + 1 < t1, W + 2 * (q0 + nq) * K * kPanel,
                          2 * std::min<int64_t>(kPairsPerTile, pairs - q0 - nq) * K, M, kGatedRows);
      for (int64_t m = 0, i = 0; m < M; m += kGatedRows, ++i) {
        const int mr = static_cast<int>(std::min<int64_t>(kGatedRows, M - m));
        GatedStore st{C + m * I + q0 * kPanel, I, last};
        const float* w = W + 2 * q0 * K * kPanel;
        if (nq == kPairsPerTile) {
          panel_rows<kGatedRows, 2 * kPairsPerTile>(mr, A + m * lda, lda, w, K, st, next.share(i, K));
        } else {
          panel_rows<kGatedRows, 2>(mr, A + m * lda, lda, w, K, st);
        }
      }
    }
  });
#endif
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("supported", &supported);
  m.def("pack", &pack);
  m.def("linear", &linear, py::arg("x"), py::arg("packed"), py::arg("bias"), py::arg("n"),
        py::call_guard<py::gil_scoped_release>());
  m.def("pack_gated", &pack_gated);
  m.def("gated_linear", &gated_linear, py::arg("x"), py::arg("packed"), py::arg("i"),
        py::call_guard<py::gil_scoped_release>());
}
