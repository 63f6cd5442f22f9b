// gated_ffn: SamOut's feed-forward block (SPEC.md), as one differentiable operation:
//
//   a = y @ W1^T + b1,  g = y @ Wg^T + bg,  h = a * relu(g),  out = h @ W2^T + b2
//
// For fp32 CPU tensors the two input projections run as ONE product against [W1; Wg] (2d x d), and
// the gating is one pass over rows; the backward is one pass for d[a | g], then one product for
// dL/dy (K = 2d) and one for dL/d[W1; Wg]. The module-by-module version runs two products each way,
// adds the two dL/dy, and makes five elementwise passes (relu, mul; mul, mul, threshold_backward).
// Anything else (CUDA, autocast, double) runs the composite, which is also the reference.
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

// Whether gated_ffn takes the fused fp32 CPU path for these tensors.
bool gated_ffn_uses_fused(const torch::Tensor& y, const torch::Tensor& w1, const torch::Tensor& w2);

}  // namespace samout::ops
