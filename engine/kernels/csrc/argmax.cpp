// Row-wise argmax for the CPU: the greedy sampler's one pass over the logits. torch's argmax over the last
// dimension of a [64, 49152] fp32 batch took 2.2-2.7 ms on the 2-core EPYC dev machine (about 5 GB/s, in cache);
// one vectorized pass per row, rows split across threads: 0.21 ms.
//
// Same answer as torch.argmax: the first index of the maximum; a row with a NaN gives its first NaN (torch
// treats NaN as the largest value).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

int64_t first_nan(const float* x, int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    if (std::isnan(x[j])) return j;
  return -1;
}

int64_t argmax_row(const float* x, int64_t n) {
  int64_t j = 1, best = 0;
  float best_v = x[0];
  bool nan = std::isnan(x[0]);
#if defined(__AVX512F__)
  if (n >= 16) {
    // per lane: the lane's maximum and the first index where it occurs (strict >, so later equal values
    // never replace it)
    __m512 vmax = _mm512_loadu_ps(x);
    __m512i vidx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512i cur = vidx;
    const __m512i step = _mm512_set1_epi32(16);
    __mmask16 unordered = _mm512_cmp_ps_mask(vmax, vmax, _CMP_UNORD_Q);
    for (j = 16; j + 16 <= n; j += 16) {
      cur = _mm512_add_epi32(cur, step);
      const __m512 v = _mm512_loadu_ps(x + j);
      const __mmask16 gt = _mm512_cmp_ps_mask(v, vmax, _CMP_GT_OQ);
      unordered |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      vmax = _mm512_mask_mov_ps(vmax, gt, v);
      vidx = _mm512_mask_mov_epi32(vidx, gt, cur);
    }
    nan = nan || unordered != 0;
    alignas(64) float mv[16];
    alignas(64) int32_t mi[16];
    _mm512_store_ps(mv, vmax);
    _mm512_store_epi32(mi, vidx);
    best_v = mv[0];
    best = mi[0];
    for (int l = 1; l < 16; ++l)
      if (mv[l] > best_v || (mv[l] == best_v && mi[l] < best)) {
        best_v = mv[l];
        best = mi[l];
      }
  }
#endif
  for (; j < n; ++j) {
    if (std::isnan(x[j])) nan = true;
    if (x[j] > best_v) {
      best_v = x[j];
      best = j;
    }
  }
  return nan ? first_nan(x, n) : best;
}

}  // namespace

// x: [R, V] fp32 with contiguous rows (rows may be strided) -> [R] int64
torch::Tensor argmax_rows(torch::Tensor x) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2 && x.stride(1) == 1,
              "argmax_rows takes [R, V] float32 with contiguous rows");
  TORCH_CHECK(x.size(1) > 0 && x.size(1) < (int64_t{1} << 31), "argmax_rows: rows must hold 1 to 2^31-1 values");
  const int64_t R = x.size(0), V = x.size(1), xs = x.stride(0);
  auto out = torch::empty({R}, x.options().dtype(torch::kInt64));
  const float* xp = x.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, R, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) op[r] = argmax_row(xp + r * xs, V);
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("argmax_rows", &argmax_rows, "first index of each row's maximum (CPU, fp32)", py::call_guard<py::gil_scoped_release>());
}
