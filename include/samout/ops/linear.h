// linear: y = x @ w^T + b, as torch::nn::functional::linear (at::linear: MKL on the CPU, cuBLAS on
// a GPU), differentiable in x, w and b. Decoding's few-row fp32 CPU products without autograd go to
// the GEMV instead (gemv.h), which streams the weights once.
#pragma once

#include <torch/torch.h>

namespace samout::ops {

// x: (..., K); w: (N, K); b: undefined or (N,). Returns (..., N).
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b = {});

// While one is alive, linear() on this thread calls at::linear only: the baseline against which
// bench_generate measures the GEMV, in the same run.
class AtLinearOnlyGuard {
 public:
  AtLinearOnlyGuard();
  ~AtLinearOnlyGuard();
  AtLinearOnlyGuard(const AtLinearOnlyGuard&) = delete;
  AtLinearOnlyGuard& operator=(const AtLinearOnlyGuard&) = delete;

 private:
  bool saved_;
};

}  // namespace samout::ops
