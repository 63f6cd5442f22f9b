// mix_layer_norm: the end of a SamOut decoder layer (SPEC.md),
//     LayerNorm_d(alpha * f + (1 - alpha) * x) * gamma + beta   (+ x, the outer residual),
// differentiable in f, x, alpha, gamma and beta.
//
// As ATen ops this is six passes over the (B, T, d) activations forward and about eight backward.
// For fp32 CPU tensors a fused kernel does the forward in one pass over rows (each row stays in L1
// while its mean and variance are taken) and the backward in one more, with the parameter
// gradients reduced from fixed blocks of rows, so every result is bitwise the same whatever the
// thread count. Anything else (CUDA, bf16 under autocast, double) goes to the composite, which is
// also the reference the kernel is tested against.
#pragma once

#include <torch/torch.h>

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

}  // namespace samout::ops
