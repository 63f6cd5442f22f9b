// gated_ffn: SamOut's feed-forward block (SPEC.md), as one differentiable operation:
//
//   a = y @ W1^T + b1,  g = y @ Wg^T + bg,  h = a * relu(g),  out = h @ W2^T + b2
//
// Registered with PyTorch's dispatcher as samout::gated_ffn; samout::gated_ffn_forward and
// samout::gated_ffn_backward are the fused fp32 CPU path's halves (gated_ffn_cpu.cpp). For fp32 CPU
// tensors needing a gradient the two input projections run as ONE product against [W1; Wg]
// (2f x d), and the gating is one pass over rows; the backward is one pass for d[a | g], then one
// product for dL/dy (K = 2f) and one for each weight. The module-by-module version runs two
// products each way, adds the two dL/dy, and makes five elementwise passes. Anything else runs the
// composite (gated_ffn_composite.cpp), also the reference. On CUDA that is the implementation
// (cuBLAS, differentiated by ATen's autograd), as for double, autocast and inference (the GEMV).
#pragma once

#include <torch/torch.h>

namespace samout::ops {

// y: (..., d); W1, Wg: (f, d); W2: (d_out, f); biases (f,), (f,), (d_out,). Returns (..., d_out).
// Differentiable in all seven.
torch::Tensor gated_ffn(const torch::Tensor& y, const torch::Tensor& w1, const torch::Tensor& b1,
                        const torch::Tensor& wg, const torch::Tensor& bg, const torch::Tensor& w2,
                        const torch::Tensor& b2);

// The same from ATen ops (through linear()), differentiable by ATen's autograd.
torch::Tensor gated_ffn_composite(const torch::Tensor& y, const torch::Tensor& w1,
                                  const torch::Tensor& b1, const torch::Tensor& wg,
                                  const torch::Tensor& bg, const torch::Tensor& w2,
                                  const torch::Tensor& b2);

// Whether gated_ffn takes the fused fp32 CPU path for these tensors (when a gradient is needed).
bool gated_ffn_uses_fused(const torch::Tensor& y, const torch::Tensor& w1, const torch::Tensor& w2);

}  // namespace samout::ops
