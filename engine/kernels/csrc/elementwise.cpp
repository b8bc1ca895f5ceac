// The per-token elementwise ops of a decoder layer on the CPU, each one pass over its rows: RMSNorm
// (with the residual add fused in), SiLU-and-multiply, and rotary embedding. At decode batch sizes the
// portable PyTorch versions cost several dispatches and temporaries per op (x^2, mean, rsqrt, the
// rotate-half concat), which is most of their time; here each op is one call.
//
// Every row is computed by the same loop whatever the number of rows, so a token's result does not
// depend on its batch. fp-contract is off in this file: the products are rounded before they are added,
// as the reference's separate multiply and add kernels do; only the order of the sum of squares in the
// norm differs from the reference (a rounding-level difference).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "softmax.h"  // exp_nonpositive, exp_nonpositive8

#if defined(__AVX2__) && defined(__FMA__)
#define TESSERA_EW_AVX2 1
#endif

#pragma GCC optimize("fp-contract=off")

#include "activation.h"  // silu_mul8, under fp-contract off

namespace {

// rows of at most this many elements in total run on one thread: below it, waking the pool costs more
// than the op
constexpr int64_t kSerialElements = 1 << 16;

int64_t grain(int64_t row_elements) { return std::max<int64_t>(1, kSerialElements / std::max<int64_t>(row_elements, 1)); }

void rms_row(const float* x, const float* w, float eps, int64_t n, float* out) {
  float ss = 0.f;
#pragma omp simd reduction(+ : ss)
  for (int64_t j = 0; j < n; ++j) {
    const float sq = x[j] * x[j];
    ss += sq;
  }
  const float r = 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float y = x[j] * r;
    out[j] = w[j] * y;
  }
}


// out[j] = silu(g[j]) * u[j]
void silu_mul_row(const float* g, const float* u, int64_t n, float* out) {
  int64_t j = 0;
#ifdef TESSERA_EW_AVX2
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(out + j, silu_mul8(_mm256_loadu_ps(g + j), _mm256_loadu_ps(u + j)));
#endif
  for (; j < n; ++j) {
    const float x = g[j];
    const float e = exp_nonpositive(-std::fabs(x));
    const float s = (x >= 0.f ? x : x * e) / (1.f + e);
    out[j] = s * u[j];
  }
}

// one head row of rotate-half rotary: out = x cos + rotate_half(x) sin, D even
void rotary_row(const float* x, const float* c, const float* s, int64_t D, float* out) {
  const int64_t half = D / 2;
#pragma omp simd
  for (int64_t d = 0; d < half; ++d) {
    const float a = x[d] * c[d], b = -x[d + half] * s[d];
    out[d] = a + b;
  }
#pragma omp simd
  for (int64_t d = half; d < D; ++d) {
    const float a = x[d] * c[d], b = x[d - half] * s[d];
    out[d] = a + b;
  }
}

void check_rows(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.dtype() == torch::kFloat32, name, " must be float32");
  TORCH_CHECK(t.dim() == 2 && t.stride(1) == 1, name, " must be [T, H] with contiguous rows");
}

}  // namespace

// x: [T, H] (rows may be strided), weight: [H] -> [T, H]
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  check_rows(x, "x");
  weight = weight.contiguous();
  const int64_t T = x.size(0), H = x.size(1), xs = x.stride(0);
  auto out = torch::empty({T, H}, x.options());
  const float *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float e = static_cast<float>(eps);
  at::parallel_for(0, T, grain(H), [&](int64_t b, int64_t end) {
    for (int64_t t = b; t < end; ++t) rms_row(xp + t * xs, wp, e, H, op + t * H);
  });
  return out;
}

// x, residual: [T, H] -> (rms_norm(x + residual), x + residual)
std::vector<torch::Tensor> add_rms_norm(torch::Tensor x, torch::Tensor residual, torch::Tensor weight, double eps) {
  check_rows(x, "x");
  check_rows(residual, "residual");
  TORCH_CHECK(x.sizes() == residual.sizes(), "x and residual must have the same shape");
  weight = weight.contiguous();
  const int64_t T = x.size(0), H = x.size(1), xs = x.stride(0), rs = residual.stride(0);
  auto out = torch::empty({T, H}, x.options());
  auto sum = torch::empty({T, H}, x.options());
  const float *xp = x.data_ptr<float>(), *rp = residual.data_ptr<float>(), *wp = weight.data_ptr<float>();
  float *op = out.data_ptr<float>(), *sp = sum.data_ptr<float>();
  const float e = static_cast<float>(eps);
  at::parallel_for(0, T, grain(H), [&](int64_t b, int64_t end) {
    for (int64_t t = b; t < end; ++t) {
      float* srow = sp + t * H;
      const float *xr = xp + t * xs, *rr = rp + t * rs;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) srow[j] = xr[j] + rr[j];
      rms_row(srow, wp, e, H, op + t * H);
    }
  });
  return {out, sum};
}

// x: [T, 2I] laid out [gate | up] -> [T, I]
torch::Tensor silu_and_mul(torch::Tensor x) {
  check_rows(x, "x");
  TORCH_CHECK(x.size(1) % 2 == 0, "the last dimension must be even (gate | up)");
  const int64_t T = x.size(0), I = x.size(1) / 2, xs = x.stride(0);
  auto out = torch::empty({T, I}, x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, T, grain(I), [&](int64_t b, int64_t end) {
    for (int64_t t = b; t < end; ++t) silu_mul_row(xp + t * xs, xp + t * xs + I, I, op + t * I);
  });
  return out;
}

// q: [T, H, D], k: [T, KVH, D] (heads contiguous within a token, tokens may be strided),
// cos, sin: [T, D] -> (rotated q, rotated k), both contiguous
std::vector<torch::Tensor> rotary(torch::Tensor q, torch::Tensor k, torch::Tensor cos, torch::Tensor sin) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && k.dtype() == torch::kFloat32, "float32 only");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && q.size(2) == k.size(2) && q.size(2) % 2 == 0, "bad q/k shapes");
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) == q.size(2) && k.stride(2) == 1 && k.stride(1) == k.size(2),
              "q and k must have contiguous heads");
  cos = cos.contiguous();
  sin = sin.contiguous();
  const int64_t T = q.size(0), H = q.size(1), KVH = k.size(1), D = q.size(2);
  const int64_t qs = q.stride(0), ks = k.stride(0);
  auto qo = torch::empty({T, H, D}, q.options());
  auto ko = torch::empty({T, KVH, D}, k.options());
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  float *qop = qo.data_ptr<float>(), *kop = ko.data_ptr<float>();
  at::parallel_for(0, T, grain((H + KVH) * D), [&](int64_t b, int64_t end) {
    for (int64_t t = b; t < end; ++t) {
      const float *c = cp + t * D, *s = sp + t * D;
      for (int64_t h = 0; h < H; ++h) rotary_row(qp + t * qs + h * D, c, s, D, qop + (t * H + h) * D);
      for (int64_t h = 0; h < KVH; ++h) rotary_row(kp + t * ks + h * D, c, s, D, kop + (t * KVH + h) * D);
    }
  });
  return {qo, ko};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm, "RMSNorm of each row (CPU, fp32)", py::call_guard<py::gil_scoped_release>());
  m.def("add_rms_norm", &add_rms_norm, "residual add then RMSNorm (CPU, fp32)", py::call_guard<py::gil_scoped_release>());
  m.def("silu_and_mul", &silu_and_mul, "silu(gate) * up (CPU, fp32)", py::call_guard<py::gil_scoped_release>());
  m.def("rotary", &rotary, "rotate-half rotary embedding of q and k (CPU, fp32)", py::call_guard<py::gil_scoped_release>());
}
