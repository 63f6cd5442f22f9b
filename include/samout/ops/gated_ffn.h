// gated_ffn: SamOut's feed-forward block (docs/model.md) as one differentiable op:
//   a = y @ W1^T + b1,  g = y @ Wg^T + bg,  h = a * relu(g),  out = h @ W2^T + b2
// Registered as samout::gated_ffn, with samout::gated_ffn_forward / _backward as the fused fp32 CPU
// halves (gated_ffn_cpu.cpp): with a gradient needed, the input projections are ONE product against
// [W1; Wg] and the gating one pass; the backward is one pass for d[a | g], one product for dL/dy
// (K = 2f) and one per weight (modules: two products each way and five elementwise passes).
// Everything else (CUDA/cuBLAS, double, autocast, inference through the GEMV) runs the composite
// (gated_ffn_composite.cpp), also the reference.
#pragma once

#include <torch/torch.h>

namespace samout::ops {

// y: (..., d); W1, Wg: (f, d); W2: (d_out, f); biases (f,), (f,), (d_out,). Returns (..., d_out),
// differentiable in all seven.
torch::Tensor gated_ffn(const torch::Tensor& y, const torch::Tensor& w1, const torch::Tensor& b1,
                        const torch::Tensor& wg, const torch::Tensor& bg, const torch::Tensor& w2,
                        const torch::Tensor& b2);

// The same from ATen ops (through linear()), differentiable by ATen's autograd.
torch::Tensor gated_ffn_composite(const torch::Tensor& y, const torch::Tensor& w1,
                                  const torch::Tensor& b1, const torch::Tensor& wg,
                                  const torch::Tensor& bg, const torch::Tensor& w2,
                                  const torch::Tensor& b2);

// Whether gated_ffn takes the fused fp32 CPU path (when a gradient is needed).
bool gated_ffn_uses_fused(const torch::Tensor& y, const torch::Tensor& w1, const torch::Tensor& w2);

}  // namespace samout::ops
