// linear: y = x @ w^T + b, as torch::nn::functional::linear, differentiable in x, w and b.
//
// For fp32 CPU tensors all three products (forward, dL/dx = dy @ w, dL/dw = dy^T @ x) run on
// gemm_cpu (gemm.h), which beats MKL's sgemm on the model's shapes on AMD CPUs; anything else
// (CUDA, bf16 autocast, double) goes to at::linear, whose kernels are the right ones there.
#pragma once

#include <torch/torch.h>

namespace samout::ops {

// x: (..., K); w: (N, K); b: undefined or (N,). Returns (..., N).
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b = {});

// y (M, N) = x2 @ w^T (+ b) on gemm_cpu, without autograd, for a contiguous 2-D fp32 CPU x2 (M, K):
// the bias is broadcast into y first and the product added onto it, so there is no second pass.
torch::Tensor linear_2d_cpu(const torch::Tensor& x2, const torch::Tensor& w,
                            const torch::Tensor& b = {});

// Whether linear() takes the gemm_cpu path for these tensors.
bool linear_uses_gemm_cpu(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b);

}  // namespace samout::ops
