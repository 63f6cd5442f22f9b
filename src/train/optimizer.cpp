#include "samout/train/optimizer.h"

#include <ATen/Parallel.h>
#include <glog/logging.h>

#include <cmath>

#include "samout/common/cpu_features.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace samout::train {

FlatAdam::FlatAdam(const torch::Tensor& params, const torch::Tensor& grads, int64_t begin,
                   int64_t end, AdamOptions opts)
    : params_(params.narrow(0, begin, end - begin)),
      grads_(grads.narrow(0, begin, end - begin)),
      opts_(opts) {
  CHECK(params.sizes() == grads.sizes() && params.dim() == 1);
  CHECK(params_.scalar_type() == torch::kFloat32 && params_.is_contiguous() && grads_.is_contiguous());
  exp_avg_ = torch::zeros_like(params_);
  exp_avg_sq_ = torch::zeros_like(params_);
  steps_ = torch::zeros({}, params_.options());  // float32, as ATen's fused kernels want it
}

void FlatAdam::set_state(const torch::Tensor& exp_avg, const torch::Tensor& exp_avg_sq,
                         int64_t steps) {
  CHECK(exp_avg.numel() == exp_avg_.numel() && exp_avg_sq.numel() == exp_avg_sq_.numel());
  exp_avg_.copy_(exp_avg);
  exp_avg_sq_.copy_(exp_avg_sq);
  steps_.fill_(static_cast<double>(steps));
}

int64_t FlatAdam::steps_taken() const { return static_cast<int64_t>(steps_.item<double>()); }

void FlatAdam::step(double lr, const torch::Tensor& found_inf) {
  torch::NoGradGuard no_grad;
  if (params_.is_cuda()) {
    // ATen's fused Adam: one pass, and it skips the update itself when found_inf is 1, so a skipped
    // step costs no host sync. The step count goes up by 1 - found_inf, as in torch.optim.
    std::vector<torch::Tensor> p{params_}, g{grads_}, m{exp_avg_}, v{exp_avg_sq_}, vmax, st{steps_};
    steps_.add_(1);
    const auto inf = std::optional<torch::Tensor>(found_inf.to(torch::kFloat32));
    if (opts_.decoupled) {
      at::_fused_adamw_(p, g, m, v, vmax, st, lr, opts_.beta1, opts_.beta2, opts_.weight_decay,
                        opts_.eps, /*amsgrad=*/false, /*maximize=*/false, std::nullopt, inf);
    } else {
      at::_fused_adam_(p, g, m, v, vmax, st, lr, opts_.beta1, opts_.beta2, opts_.weight_decay,
                       opts_.eps, /*amsgrad=*/false, /*maximize=*/false, std::nullopt, inf);
    }
    steps_.sub_(*inf);
    return;
  }
  if (found_inf.item<float>() != 0.0f) return;  // the CPU reads it for free
  const int64_t step = steps_taken() + 1;
  steps_.fill_(static_cast<double>(step));
  const double bc1 = 1.0 - std::pow(opts_.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(opts_.beta2, static_cast<double>(step));
  // PyTorch's single-tensor Adam, in float like its CPU path:
  //   g += wd*p (Adam) | p *= 1 - lr*wd (AdamW); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
  //   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
  AdamScalars s;
  s.beta1 = opts_.beta1, s.beta2 = opts_.beta2, s.eps = opts_.eps, s.weight_decay = opts_.weight_decay;
  s.step_size = lr / bc1, s.sqrt_bc2 = std::sqrt(bc2);
  s.decay = opts_.decoupled ? 1.0f - static_cast<float>(lr * opts_.weight_decay) : 1.0f;
  s.l2 = !opts_.decoupled && opts_.weight_decay != 0.0;
  float* p = params_.data_ptr<float>();
  const float* g = grads_.data_ptr<float>();
  float* m = exp_avg_.data_ptr<float>();
  float* v = exp_avg_sq_.data_ptr<float>();
  at::parallel_for(0, params_.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    adam_update_cpu(p + begin, g + begin, m + begin, v + begin, end - begin, s);
  });
}

namespace {

void adam_scalar(float* p, const float* g, float* m, float* v, int64_t n, const AdamScalars& s) {
  const float omb1 = 1 - s.beta1, omb2 = 1 - s.beta2;
  for (int64_t i = 0; i < n; ++i) {
    float gi = g[i];
    if (s.l2) gi += s.weight_decay * p[i];
    const float mi = s.beta1 * m[i] + omb1 * gi;
    const float vi = s.beta2 * v[i] + omb2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * s.decay - s.step_size * mi / (std::sqrt(vi) / s.sqrt_bc2 + s.eps);
  }
}

#if defined(__x86_64__)
// Without it GCC leaves the loop above scalar (std::sqrt may set errno) on the x86-64 baseline: the
// step's ~21M square roots and divisions then cost more than streaming the four buffers. Plain
// multiplies and adds, never FMA, so the result is the scalar loop's to the bit.
__attribute__((target("avx2"))) void adam_avx2(float* p, const float* g, float* m, float* v,
                                                int64_t n, const AdamScalars& s) {
  const __m256 b1 = _mm256_set1_ps(s.beta1), b2 = _mm256_set1_ps(s.beta2);
  const __m256 omb1 = _mm256_set1_ps(1 - s.beta1), omb2 = _mm256_set1_ps(1 - s.beta2);
  const __m256 wd = _mm256_set1_ps(s.weight_decay), decay = _mm256_set1_ps(s.decay);
  const __m256 step = _mm256_set1_ps(s.step_size), sbc2 = _mm256_set1_ps(s.sqrt_bc2);
  const __m256 eps = _mm256_set1_ps(s.eps);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 pi = _mm256_loadu_ps(p + i);
    __m256 gi = _mm256_loadu_ps(g + i);
    if (s.l2) gi = _mm256_add_ps(gi, _mm256_mul_ps(wd, pi));
    const __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(omb1, gi));
    const __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)),
                                    _mm256_mul_ps(_mm256_mul_ps(omb2, gi), gi));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    const __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), sbc2), eps);
    const __m256 upd = _mm256_div_ps(_mm256_mul_ps(step, mi), den);
    _mm256_storeu_ps(p + i, _mm256_sub_ps(_mm256_mul_ps(pi, decay), upd));
  }
  adam_scalar(p + i, g + i, m + i, v + i, n - i, s);
}

const bool kHasAvx2 = cpu_has_avx2_fma();
#else
const bool kHasAvx2 = false;
#endif

}  // namespace

bool adam_update_has_avx2() { return kHasAvx2; }

void adam_update_cpu(float* p, const float* g, float* m, float* v, int64_t n, const AdamScalars& s,
                     bool allow_simd) {
#if defined(__x86_64__)
  if (allow_simd && kHasAvx2) return adam_avx2(p, g, m, v, n, s);
#endif
  adam_scalar(p, g, m, v, n, s);
}

double learning_rate(int64_t step, int64_t total, double lr, double min_lr, int64_t warmup,
                     const std::string& schedule) {
  if (warmup > 0 && step < warmup) return lr * static_cast<double>(step + 1) / warmup;
  if (schedule != "cosine" || total <= warmup) return lr;
  const double progress =
      std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(total - warmup));
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace samout::train
