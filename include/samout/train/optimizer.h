// Adam and AdamW over the flat parameter and gradient buffers (dist/grad_reducer.h) in one fused
// pass (ATen's _fused_adam_ / _fused_adamw_, CPU and CUDA), where a per-tensor optimizer walks the
// model's ~100 tensors with ~10 ATen ops each. The math is torch.optim.Adam / AdamW's. The state
// covers a range [begin, end) of the flat buffer: ZeRO-1's shard.
#pragma once

#include <torch/torch.h>

#include <string>

#include "samout/train/config.h"

namespace samout::train {

struct AdamOptions {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool decoupled = false;  // AdamW: p *= 1 - lr*wd before the update; Adam: g += wd*p
};

class FlatAdam {
 public:
  // Updates params[begin, end) from grads[begin, end); the moments cover that range only.
  FlatAdam(const torch::Tensor& params, const torch::Tensor& grads, int64_t begin, int64_t end,
           AdamOptions opts);
  // One update with learning rate `lr`, unless `found_inf` (a float scalar on the parameters'
  // device) is 1: then nothing changes, the step count included. On the GPU neither case syncs.
  void step(double lr, const torch::Tensor& found_inf);
  void step(double lr) { step(lr, torch::zeros({}, params_.options())); }
  // Resume: moments of the range and the number of steps they have seen.
  void set_state(const torch::Tensor& exp_avg, const torch::Tensor& exp_avg_sq, int64_t steps);
  int64_t steps_taken() const;  // reads the device (a checkpoint-time sync on the GPU)
  torch::Tensor exp_avg() const { return exp_avg_; }
  torch::Tensor exp_avg_sq() const { return exp_avg_sq_; }

 private:
  torch::Tensor params_, grads_, exp_avg_, exp_avg_sq_;
  AdamOptions opts_;
  torch::Tensor steps_;  // updates taken, a float32 scalar on the parameters' device
};

// Learning rate at `step` (0-based): linear warmup to `lr` over `warmup` steps, then constant or
// cosine decay to `min_lr` at `total` steps.
double learning_rate(int64_t step, int64_t total, double lr, double min_lr, int64_t warmup,
                     LrSchedule schedule);

}  // namespace samout::train
