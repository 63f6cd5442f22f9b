#include "samout/train/optimizer.h"

#include <ATen/Parallel.h>
#include <glog/logging.h>

#include <cmath>

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
}

void FlatAdam::set_state(const torch::Tensor& exp_avg, const torch::Tensor& exp_avg_sq,
                         int64_t steps) {
  CHECK(exp_avg.numel() == exp_avg_.numel() && exp_avg_sq.numel() == exp_avg_sq_.numel());
  exp_avg_.copy_(exp_avg);
  exp_avg_sq_.copy_(exp_avg_sq);
  step_ = steps;
}

void FlatAdam::step(double lr) {
  ++step_;
  const double bc1 = 1.0 - std::pow(opts_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(opts_.beta2, static_cast<double>(step_));
  torch::NoGradGuard no_grad;
  if (params_.is_cuda()) {
    // On the GPU, ATen's fused Adam kernel does the same single pass.
    std::vector<torch::Tensor> p{params_}, g{grads_}, m{exp_avg_}, v{exp_avg_sq_}, vmax;
    auto steps = torch::full({}, static_cast<double>(step_), params_.options());
    std::vector<torch::Tensor> st{steps};
    if (opts_.decoupled) {
      at::_fused_adamw_(p, g, m, v, vmax, st, lr, opts_.beta1, opts_.beta2, opts_.weight_decay,
                        opts_.eps, /*amsgrad=*/false, /*maximize=*/false);
    } else {
      at::_fused_adam_(p, g, m, v, vmax, st, lr, opts_.beta1, opts_.beta2, opts_.weight_decay,
                       opts_.eps, /*amsgrad=*/false, /*maximize=*/false);
    }
    return;
  }
  // PyTorch's single-tensor Adam, in float like its CPU path:
  //   g += wd*p (Adam) | p *= 1 - lr*wd (AdamW); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
  //   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
  const float b1 = opts_.beta1, b2 = opts_.beta2, eps = opts_.eps, wd = opts_.weight_decay;
  const float step_size = lr / bc1, sqrt_bc2 = std::sqrt(bc2);
  const float decay = opts_.decoupled ? 1.0f - static_cast<float>(lr * opts_.weight_decay) : 1.0f;
  const bool l2 = !opts_.decoupled && opts_.weight_decay != 0.0;
  float* p = params_.data_ptr<float>();
  const float* g = grads_.data_ptr<float>();
  float* m = exp_avg_.data_ptr<float>();
  float* v = exp_avg_sq_.data_ptr<float>();
  at::parallel_for(0, params_.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float gi = g[i];
      if (l2) gi += wd * p[i];
      const float mi = b1 * m[i] + (1 - b1) * gi;
      const float vi = b2 * v[i] + (1 - b2) * gi * gi;
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] * decay - step_size * mi / (std::sqrt(vi) / sqrt_bc2 + eps);
    }
  });
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
