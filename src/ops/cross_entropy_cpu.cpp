// The fused CPU forward of cross_entropy_sum (cross_entropy.h), for contiguous fp32 logits, and the
// forward op's CPU kernel (the composite for other logits).
//
// One row (V floats, 34 KB at the seed's V) at a time, so after the first pass the row is in L1/L2:
//   1. max (and a NaN check) over the row;
//   2. e = exp(x - max) into the gradient buffer, summed;
//   3. the buffer scaled by 1/sum and the target's entry decreased by 1: softmax - one_hot.
// The (N, V) logits are read from memory once and the gradient written once, where the composite
// (log_softmax, gather, exp_, scatter_add_) streams 53 MB four to six times and computes exp twice.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "avx2_util.h"
#include "samout/common/cpu_features.h"
#include "samout/ops/cross_entropy.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace samout::ops {
namespace {

// The scalar reference of one row; also the tail of the vector path.
void row_scalar(const float* x, int64_t V, int64_t t, float* loss, float* grad) {
  float mx = -std::numeric_limits<float>::infinity();
  bool nan = false;
  for (int64_t j = 0; j < V; ++j) {
    nan |= std::isnan(x[j]);
    mx = std::max(mx, x[j]);
  }
  if (nan || mx == std::numeric_limits<float>::infinity()) {  // torch gives NaN here too
    *loss = std::numeric_limits<float>::quiet_NaN();
    if (grad)
      for (int64_t j = 0; j < V; ++j) grad[j] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  double sum = 0;
  for (int64_t j = 0; j < V; ++j) {
    const float e = std::exp(x[j] - mx);
    sum += e;
    if (grad) grad[j] = e;
  }
  *loss = static_cast<float>(static_cast<double>(mx) + std::log(sum) - x[t]);
  if (grad) {
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t j = 0; j < V; ++j) grad[j] *= inv;
    grad[t] -= 1.0f;
  }
}

#if defined(__x86_64__)
// exp for x <= 0 (x - max): Cephes' expf, range reduction by ln 2 in two parts and a degree-5
// polynomial; within 2 ulp of expf for x >= -87, and a positive denormal-free tiny value below.
__attribute__((target("avx2,fma"))) inline __m256 exp_nonpos(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma"))) void row_avx2(const float* x, int64_t V, int64_t t, float* loss,
                                                  float* grad) {
  const int64_t V8 = V / 8 * 8;
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 unord = _mm256_setzero_ps();
  for (int64_t j = 0; j < V8; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    unord = _mm256_or_ps(unord, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    vmax = _mm256_max_ps(vmax, v);
  }
  float mx = -std::numeric_limits<float>::infinity();
  {
    alignas(32) float m[8];
    _mm256_store_ps(m, vmax);
    for (float f : m) mx = std::max(mx, f);
  }
  bool nan = _mm256_movemask_ps(unord) != 0;
  for (int64_t j = V8; j < V; ++j) {
    nan |= std::isnan(x[j]);
    mx = std::max(mx, x[j]);
  }
  if (nan || mx == std::numeric_limits<float>::infinity()) return row_scalar(x, V, t, loss, grad);

  const __m256 vm = _mm256_set1_ps(mx);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= V8; j += 16) {  // two chains, so the adds do not serialise on one register
    const __m256 e0 = exp_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
    const __m256 e1 = exp_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vm));
    acc0 = _mm256_add_ps(acc0, e0);
    acc1 = _mm256_add_ps(acc1, e1);
    if (grad) _mm256_storeu_ps(grad + j, e0), _mm256_storeu_ps(grad + j + 8, e1);
  }
  for (; j < V8; j += 8) {
    const __m256 e0 = exp_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
    acc0 = _mm256_add_ps(acc0, e0);
    if (grad) _mm256_storeu_ps(grad + j, e0);
  }
  double sum = hsum(_mm256_add_ps(acc0, acc1));
  for (; j < V; ++j) {
    const float e = std::exp(x[j] - mx);
    sum += e;
    if (grad) grad[j] = e;
  }
  *loss = static_cast<float>(static_cast<double>(mx) + std::log(sum) - x[t]);
  if (grad) {
    const __m256 inv = _mm256_set1_ps(static_cast<float>(1.0 / sum));
    for (j = 0; j < V8; j += 8)
      _mm256_storeu_ps(grad + j, _mm256_mul_ps(_mm256_loadu_ps(grad + j), inv));
    for (; j < V; ++j) grad[j] *= static_cast<float>(1.0 / sum);
    grad[t] -= 1.0f;
  }
}

const bool kAvx2 = cpu_has_avx2_fma();
#endif

}  // namespace

void cross_entropy_forward_cpu(const torch::Tensor& logits, const torch::Tensor& targets,
                               int64_t ignore_index, torch::Tensor& row_loss, torch::Tensor* grad,
                               bool allow_simd) {
  cross_entropy_check(logits, targets);
  const int64_t N = logits.size(0), V = logits.size(1);
  const auto t = targets.to(torch::kLong).contiguous();
  const int64_t* tp = t.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i)
    TORCH_CHECK(tp[i] == ignore_index || (tp[i] >= 0 && tp[i] < V), "cross_entropy_sum: target ",
                tp[i], " of row ", i, " is outside [0, ", V, ")");
  row_loss = torch::empty({N}, logits.options());
  if (grad) *grad = torch::empty_like(logits);
  const float* x = logits.data_ptr<float>();
  float* lp = row_loss.data_ptr<float>();
  float* gp = grad ? grad->data_ptr<float>() : nullptr;
#if defined(__x86_64__)
  const bool simd = allow_simd && kAvx2;
#else
  const bool simd = false;
#endif
  at::parallel_for(0, N, 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* g = gp ? gp + i * V : nullptr;
      if (tp[i] == ignore_index) {  // no loss, no gradient
        lp[i] = 0.0f;
        if (g) std::fill(g, g + V, 0.0f);
        continue;
      }
#if defined(__x86_64__)
      if (simd) {
        row_avx2(x + i * V, V, tp[i], lp + i, g);
        continue;
      }
#endif
      row_scalar(x + i * V, V, tp[i], lp + i, g);
    }
  });
}

namespace {

std::tuple<torch::Tensor, torch::Tensor> forward_cpu(const torch::Tensor& logits,
                                                     const torch::Tensor& targets,
                                                     int64_t ignore_index, bool with_grad) {
  if (!cross_entropy_uses_fused(logits))
    return cross_entropy_forward_composite(logits, targets, ignore_index, with_grad);
  torch::Tensor row_loss, grad;
  cross_entropy_forward_cpu(logits, targets, ignore_index, row_loss, with_grad ? &grad : nullptr);
  return {row_loss.sum(), with_grad ? grad : at::empty({0}, logits.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(samout, CPU, m) { m.impl("cross_entropy_sum_forward", forward_cpu); }

}  // namespace samout::ops
