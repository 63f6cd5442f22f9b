// mix_layer_norm: the end of a decoder layer (docs/model.md), differentiable in all five inputs:
//     LayerNorm_d(alpha * f + (1 - alpha) * x) * gamma + beta   (+ x, the outer residual).
// Registered as samout::mix_layer_norm, with samout::mix_layer_norm_forward / _backward as the
// fused kernel's halves. As ATen ops it is six passes over (B, T, d) forward, ~8 backward; for
// fp32 CPU tensors the fused kernel (mix_norm_cpu.cpp) takes one pass each way, with parameter
// gradients reduced over fixed blocks of rows so results are bitwise the same at any thread count.
// Anything else (bf16 autocast, double, CUDA) runs the composite (mix_norm_composite.cpp), also the
// reference. mix_norm.cpp: schemas, Meta kernels, entries; mix_norm_autograd.cpp: autograd.
#pragma once

#include <torch/torch.h>

#include <tuple>

namespace samout::ops {

// f, x: (..., d), same shape; alpha: one element (0-dim in the model); gamma, beta: (d,).
// Returns (..., d): LayerNorm(alpha * f + (1 - alpha) * x) * gamma + beta, plus x when
// add_residual.
torch::Tensor mix_layer_norm(const torch::Tensor& f, const torch::Tensor& x,
                             const torch::Tensor& alpha, const torch::Tensor& gamma,
                             const torch::Tensor& beta, double eps, bool add_residual);

// The same as ATen ops (the model's expression before the fused kernel).
torch::Tensor mix_layer_norm_composite(const torch::Tensor& f, const torch::Tensor& x,
                                       const torch::Tensor& alpha, const torch::Tensor& gamma,
                                       const torch::Tensor& beta, double eps, bool add_residual);

// Whether mix_layer_norm() takes the fused kernel for these tensors.
bool mix_norm_uses_fused(const torch::Tensor& f, const torch::Tensor& x, const torch::Tensor& alpha,
                         const torch::Tensor& gamma, const torch::Tensor& beta);

// The fused kernel's ops, no autograd: (out, mean, rstd) (mean, rstd: f.shape[:-1]), and from
// them (df, dx, dalpha, dgamma, dbeta).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> mix_layer_norm_forward(
    const torch::Tensor& f, const torch::Tensor& x, const torch::Tensor& alpha,
    const torch::Tensor& gamma, const torch::Tensor& beta, double eps, bool add_residual);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor>
mix_layer_norm_backward(const torch::Tensor& grad_out, const torch::Tensor& f,
                        const torch::Tensor& x, const torch::Tensor& alpha,
                        const torch::Tensor& gamma, const torch::Tensor& mean,
                        const torch::Tensor& rstd, bool add_residual);

}  // namespace samout::ops
