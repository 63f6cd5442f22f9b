// The small-batch fp32 product of gemv.h: blocking, threading, the AVX2 kernels and their fallback.
#include "samout/ops/gemv.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "samout/common/cpu_features.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SAMOUT_GEMV_X86 1
#endif

namespace samout::ops {
namespace {

// Rows of x per pass over a weight row: later passes find the row in L1 (2 KiB at K = 512).
constexpr int kGroup = 3;

// W is walked one row at a time, front to back: one sequential stream per thread. (Four interleaved
// rows measured 12-18% slower on Zen 3 at batch 1; software prefetching made no difference.)

// The least weight bytes per thread: ~64 KiB (~10 us at per-core bandwidth) amortises waking a
// thread (a few us). The model's matrices (1 to 17 MB) give both threads large contiguous halves.
constexpr int64_t kMinTaskBytes = 64 << 10;

// acc[b] += sum over k in [k0, K) of w[k] * x[b * K + k]: the portable kernel, and the K % 8 tail
// of the AVX2 one.
template <int NB>
inline void dot_portable(const float* w, int64_t K, int64_t k0, const float* x, float* acc) {
  for (int b = 0; b < NB; ++b) {
    float s = 0.0f;
    for (int64_t k = k0; k < K; ++k) s += w[k] * x[b * K + k];
    acc[b] += s;
  }
}

#ifdef SAMOUT_GEMV_X86
__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {  // the sum of v's 8 lanes
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// acc[b] = sum over k of w[k] * x[b * K + k] for b < NB: one pass over a row of W, 8 floats a FMA.
// U = 4 independent accumulators per row of x (at most 12 of the 16 ymm registers) keep the FMA
// latency off the critical path; the K % 8 tail runs on the portable loop. U does not depend on NB,
// so a row of x gets the same bits whatever rows share its pass (batched decoding == one by one).
template <int NB>
__attribute__((target("avx2,fma"))) void dot_avx2(const float* w, int64_t K, const float* x,
                                                  float* acc) {
  constexpr int U = 4;
  __m256 s[NB][U];
  for (int b = 0; b < NB; ++b)
    for (int u = 0; u < U; ++u) s[b][u] = _mm256_setzero_ps();
  const int64_t KU = K - K % (8 * U), K8 = K & ~int64_t(7);
  int64_t k = 0;
  for (; k < KU; k += 8 * U)
    for (int u = 0; u < U; ++u) {
      const __m256 wv = _mm256_loadu_ps(w + k + 8 * u);
      for (int b = 0; b < NB; ++b)
        s[b][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + b * K + k + 8 * u), s[b][u]);
    }
  for (; k < K8; k += 8) {
    const __m256 wv = _mm256_loadu_ps(w + k);
    for (int b = 0; b < NB; ++b)
      s[b][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + b * K + k), s[b][0]);
  }
  for (int b = 0; b < NB; ++b) {
    __m256 t = s[b][0];
    for (int u = 1; u < U; ++u) t = _mm256_add_ps(t, s[b][u]);
    acc[b] = hsum(t);
  }
  if (K8 < K) dot_portable<NB>(w, K, K8, x, acc);
}

#endif

}  // namespace

bool gemv_has_avx2() {
  static const bool yes = cpu_has_avx2_fma();
  return yes;
}

namespace {

template <int NB>
void dot(bool avx2, const float* w, int64_t K, const float* x, float* acc) {
#ifdef SAMOUT_GEMV_X86
  if (avx2) return dot_avx2<NB>(w, K, x, acc);
#endif
  for (int b = 0; b < NB; ++b) acc[b] = 0.0f;
  dot_portable<NB>(w, K, 0, x, acc);
}

// Rows [n0, n1) of y for every row of x.
void gemv_range(bool avx2, const float* x, int64_t rows, int64_t K, const float* w, int64_t N,
                const float* bias, float* y, int64_t n0, int64_t n1) {
  float acc[kGroup];
  for (int64_t n = n0; n < n1; ++n) {
    const float* wn = w + n * K;
    const float add = bias ? bias[n] : 0.0f;
    for (int64_t b0 = 0; b0 < rows; b0 += kGroup) {
      const int64_t nb = std::min<int64_t>(kGroup, rows - b0);
      const float* xb = x + b0 * K;
      switch (nb) {
        case 1:
          dot<1>(avx2, wn, K, xb, acc);
          break;
        case 2:
          dot<2>(avx2, wn, K, xb, acc);
          break;
        default:
          dot<3>(avx2, wn, K, xb, acc);
          break;
      }
      for (int64_t b = 0; b < nb; ++b) y[(b0 + b) * N + n] = acc[b] + add;
    }
  }
}

}  // namespace

void gemv_f32(const float* x, int64_t rows, int64_t K, const float* w, int64_t N, const float* bias,
              float* y) {
  if (rows <= 0 || N <= 0) return;
  if (K <= 0) {  // an empty sum
    for (int64_t b = 0; b < rows; ++b)
      for (int64_t n = 0; n < N; ++n) y[b * N + n] = bias ? bias[n] : 0.0f;
    return;
  }
  // Threads split W by rows, one contiguous chunk each (at::parallel_for gives every thread one
  // range), at least kMinTaskBytes of weights per thread.
  const int64_t row_bytes = K * static_cast<int64_t>(sizeof(float));
  const int64_t grain = std::max<int64_t>(1, (kMinTaskBytes + row_bytes - 1) / row_bytes);
  const bool avx2 = gemv_has_avx2();
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    gemv_range(avx2, x, rows, K, w, N, bias, y, n0, n1);
  });
}

bool linear_rows_fast(const torch::Tensor& x, const torch::Tensor& weight,
                      const c10::optional<torch::Tensor>& bias) {
  auto plain_f32_cpu = [](const torch::Tensor& t) {
    return t.defined() && t.device().is_cpu() && t.layout() == torch::kStrided &&
           t.scalar_type() == torch::kFloat && !t.is_neg();
  };
  if (!plain_f32_cpu(x) || !plain_f32_cpu(weight)) return false;
  // Fake tensors of a trace (torch.compile, opcheck) have symbolic sizes and no data.
  if (x.unsafeGetTensorImpl()->has_symbolic_sizes_strides() ||
      weight.unsafeGetTensorImpl()->has_symbolic_sizes_strides())
    return false;
  // A weight that is not one dense row-major block (a transposed or sliced view) would need a copy
  // as big as the read the kernel saves; at::linear handles strides itself.
  if (weight.dim() != 2 || !weight.is_contiguous()) return false;
  const int64_t N = weight.size(0), K = weight.size(1);
  // Wrong shapes go to at::linear, whose error messages are the familiar ones.
  if (x.dim() < 1 || x.size(-1) != K || K == 0 || N == 0) return false;
  const int64_t rows = x.numel() / K;
  if (rows < 1 || rows > kGemvMaxRows) return false;
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias && (!plain_f32_cpu(*bias) || bias->dim() != 1 || bias->size(0) != N)) return false;
  // The kernel records nothing for autograd.
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || weight.requires_grad() || (has_bias && bias->requires_grad())))
    return false;
  return true;
}

torch::Tensor linear_rows(const torch::Tensor& x, const torch::Tensor& weight,
                          const c10::optional<torch::Tensor>& bias) {
  if (!linear_rows_fast(x, weight, bias)) return at::linear(x, weight, bias);
  const int64_t N = weight.size(0), K = weight.size(1);
  // x is at most kGemvMaxRows x K: making it contiguous costs far less than the product.
  const auto xc = x.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const auto bc = has_bias ? bias->contiguous() : torch::Tensor();
  auto sizes = x.sizes().vec();
  sizes.back() = N;
  auto y = torch::empty(sizes, x.options());
  gemv_f32(xc.data_ptr<float>(), xc.numel() / K, K, weight.data_ptr<float>(), N,
           has_bias ? bc.data_ptr<float>() : nullptr, y.data_ptr<float>());
  return y;
}

}  // namespace samout::ops
