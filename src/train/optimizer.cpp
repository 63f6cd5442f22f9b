#include "samout/train/optimizer.h"

#include <glog/logging.h>

#include <cmath>
#include <optional>
#include <vector>

namespace samout::train {

FlatAdam::FlatAdam(const torch::Tensor& params, const torch::Tensor& grads, int64_t begin,
                   int64_t end, AdamOptions opts)
    : params_(params.narrow(0, begin, end - begin)),
      grads_(grads.narrow(0, begin, end - begin)),
      opts_(opts) {
  CHECK(params.sizes() == grads.sizes() && params.dim() == 1);
  CHECK(params_.scalar_type() == torch::kFloat32 && params_.is_contiguous() &&
        grads_.is_contiguous());
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
  // ATen's fused Adam (CPU and CUDA kernels): one pass over the four buffers, and it skips the
  // update itself when found_inf is 1, so a skipped step costs no host sync on a GPU. The step
  // count goes up by 1 - found_inf, as torch.optim does it.
  std::vector<torch::Tensor> p{params_}, g{grads_}, m{exp_avg_}, v{exp_avg_sq_}, vmax, st{steps_};
  const auto inf = std::optional<torch::Tensor>(found_inf.to(params_.device(), torch::kFloat32));
  steps_.add_(1);
  if (opts_.decoupled) {
    at::_fused_adamw_(p, g, m, v, vmax, st, lr, opts_.beta1, opts_.beta2, opts_.weight_decay,
                      opts_.eps, /*amsgrad=*/false, /*maximize=*/false, std::nullopt, inf);
  } else {
    at::_fused_adam_(p, g, m, v, vmax, st, lr, opts_.beta1, opts_.beta2, opts_.weight_decay,
                     opts_.eps, /*amsgrad=*/false, /*maximize=*/false, std::nullopt, inf);
  }
  steps_.sub_(*inf);
}

double learning_rate(int64_t step, int64_t total, double lr, double min_lr, int64_t warmup,
                     LrSchedule schedule) {
  if (warmup > 0 && step < warmup) return lr * static_cast<double>(step + 1) / warmup;
  if (schedule != LrSchedule::kCosine || total <= warmup) return lr;
  const double progress =
      std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(total - warmup));
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace samout::train
