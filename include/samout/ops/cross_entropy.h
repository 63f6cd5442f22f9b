// cross_entropy_sum: the sum over rows of -log softmax(logits)[target], rows whose target is
// ignore_index left out; differentiable in logits.
//
// Same value and gradient as torch's cross_entropy(reduction=sum), with fewer passes over the
// (N, V) logits, which at the seed's setting are 53 MB per step: the forward computes log-softmax
// once and turns that buffer, in place, into the gradient (softmax - one_hot); the backward only
// scales it. PyTorch's version keeps the log-probabilities, fills a zero (N, V) gradient for
// nll_loss's backward and makes another (N, V) pass in log_softmax's. CPU and CUDA alike.
//
// Registered with PyTorch's dispatcher as samout::cross_entropy_sum (cross_entropy.cpp), which
// calls samout::cross_entropy_sum_forward(logits, targets, ignore_index, with_grad) -> (loss,
// grad): the 0-dim loss and, when with_grad, the gradient softmax - one_hot (zero on ignored rows)
// in a new (N, V) tensor, else an empty (0,) one.
#pragma once

#include <torch/torch.h>

#include <tuple>

namespace samout::ops {

// logits: (N, V) floating; targets: (N,) integer ids in [0, V) or ignore_index. Returns a 0-dim
// tensor in the logits' dtype.
torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& targets,
                                int64_t ignore_index = -100);
// The op samout::cross_entropy_sum_forward, through the dispatcher.
std::tuple<torch::Tensor, torch::Tensor> cross_entropy_sum_forward(const torch::Tensor& logits,
                                                                   const torch::Tensor& targets,
                                                                   int64_t ignore_index,
                                                                   bool with_grad);

// ---- The forward op's kernels -------------------------------------------------------------------
// The argument checks every kernel makes (on symbolic sizes, so the Meta kernel makes them too).
void cross_entropy_check(const torch::Tensor& logits, const torch::Tensor& targets);
// From ATen ops, any device (cross_entropy_composite.cpp): the reference and the CUDA kernel.
std::tuple<torch::Tensor, torch::Tensor> cross_entropy_forward_composite(
    const torch::Tensor& logits, const torch::Tensor& targets, int64_t ignore_index,
    bool with_grad);
// True for contiguous 2-D fp32 CPU logits: the CPU kernel then takes the fused forward below.
bool cross_entropy_uses_fused(const torch::Tensor& logits);
// The fused CPU forward (cross_entropy_cpu.cpp). Per-row losses (N,) (0 on ignored rows) and, when
// grad is given, the gradient of their sum in a new (N, V) tensor: softmax - one_hot, zero on
// ignored rows. A row holding NaN or +inf gets a NaN loss and gradient, as in torch. Targets
// outside [0, V) other than ignore_index are an error. allow_simd = false forces the scalar rows
// (tests compare the two).
void cross_entropy_forward_cpu(const torch::Tensor& logits, const torch::Tensor& targets,
                               int64_t ignore_index, torch::Tensor& row_loss, torch::Tensor* grad,
                               bool allow_simd = true);

}  // namespace samout::ops
