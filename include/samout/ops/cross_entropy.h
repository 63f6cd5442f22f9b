// cross_entropy_sum: the sum over rows of -log softmax(logits)[target], rows whose target is
// ignore_index left out; differentiable in logits.
//
// Same value and gradient as torch's cross_entropy(reduction=sum), with fewer passes over the
// (N, V) logits, which at the seed's setting are 53 MB per step: the forward computes log-softmax
// once and turns that buffer, in place, into the gradient (softmax - one_hot); the backward only
// scales it. PyTorch's version keeps the log-probabilities, fills a zero (N, V) gradient for
// nll_loss's backward and makes another (N, V) pass in log_softmax's. CPU and CUDA alike.
#pragma once

#include <torch/torch.h>

namespace samout::ops {

// logits: (N, V) floating; targets: (N,) integer ids in [0, V) or ignore_index. Returns a 0-dim
// tensor in the logits' dtype.
torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& targets,
                                int64_t ignore_index = -100);

// ---- The fused CPU forward (cross_entropy_cpu.cpp) -------------------------------------------------
// True for contiguous 2-D fp32 CPU logits: cross_entropy_sum then takes the kernel below.
bool cross_entropy_uses_fused(const torch::Tensor& logits);
// Per-row losses (N,) (0 on ignored rows) and, when grad is given, the gradient of their sum in a new
// (N, V) tensor: softmax - one_hot, zero on ignored rows. A row holding NaN or +inf gets a NaN loss and
// gradient, as in torch. Targets outside [0, V) other than ignore_index are an error. allow_simd =
// false forces the scalar rows (tests compare the two).
void cross_entropy_forward_cpu(const torch::Tensor& logits, const torch::Tensor& targets,
                               int64_t ignore_index, torch::Tensor& row_loss, torch::Tensor* grad,
                               bool allow_simd = true);

}  // namespace samout::ops
