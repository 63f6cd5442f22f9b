// mix_layer_norm: the end of a SamOut decoder layer (SPEC.md),
//     LayerNorm_d(alpha * f + (1 - alpha) * x) * gamma + beta   (+ x, the outer residual),
// differentiable in f, x, alpha, gamma and beta.
//
// Registered with PyTorch's dispatcher as samout::mix_layer_norm (Python: torch.ops.samout, after
// loading libsamout_ops.so), with samout::mix_layer_norm_forward / _backward as the fused kernel's
// two halves. As ATen ops this is six passes over the (B, T, d) activations forward and about eight
// backward. For fp32 CPU tensors a fused kernel does the forward in one pass over rows (each row
// stays in L1 while its mean and variance are taken) and the backward in one more, with the
// parameter gradients reduced from fixed blocks of rows, so every result is bitwise the same
// whatever the thread count. Anything else (bf16 under autocast, double, and CUDA, where ATen's
// CUDA LayerNorm is the implementation) goes to the composite, which is also the reference the
// kernel is tested against.
//
// Files: mix_norm.cpp (schemas, Meta kernels, these entries), mix_norm_cpu.cpp (the fused kernels),
// mix_norm_autograd.cpp (autograd), mix_norm_composite.cpp (the composite).
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

// The fused kernel's ops, no autograd: (out, mean, rstd), mean and rstd of shape f.shape[:-1];
// and (df, dx, dalpha, dgamma, dbeta) from them.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> mix_layer_norm_forward(
    const torch::Tensor& f, const torch::Tensor& x, const torch::Tensor& alpha,
    const torch::Tensor& gamma, const torch::Tensor& beta, double eps, bool add_residual);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor>
mix_layer_norm_backward(const torch::Tensor& grad_out, const torch::Tensor& f,
                        const torch::Tensor& x, const torch::Tensor& alpha,
                        const torch::Tensor& gamma, const torch::Tensor& mean,
                        const torch::Tensor& rstd, bool add_residual);

}  // namespace samout::ops
