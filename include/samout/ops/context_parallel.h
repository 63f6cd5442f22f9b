// cummax_gate over a sequence split over a context-parallel group (docs/scan.md, slices as chunks):
// rank i of N holds positions [i T/N, (i+1) T/N). Only the running maximum crosses slices, and it
// needs only (B, d) summaries, never activations:
//   forward:  all-gather the slices' maxima M_j; the local op runs with C_i = take_max over
//             M_0..M_{i-1} as its state;
//   backward: all-gather G_j, what each slice sends to its carry's owner (the sum over its
//             carry-owned prefix); R_{i+1} = G_{i+1} + (slice i+1 wholly carry-owned ? R_{i+2} : 0)
//             reaches slice i at the owner of its last running maximum (if slice i is not wholly
//             carry-owned too).
// So a layer exchanges O(N B d) values each way, independent of T.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>

#include "samout/ops/cummax_gate.h"

namespace samout::ops {

struct ContextGroup {
  int index = 0, size = 1;  // this rank's slice, and the number of slices
  // All-gather: x (B, d) -> (size, B, d), slice j's x in row j, x's dtype and device. Called once
  // per layer in the forward and once in the backward, in layer order.
  std::function<torch::Tensor(const torch::Tensor&)> all_gather;
};

// y: this rank's slice (B, T/N, 3d); alphas (5,). No carried-in state (every window starts afresh).
// Differentiable in y and alphas; the result's state is the local slice's last running maximum.
GateResult cummax_gate_context_parallel(const torch::Tensor& y, const torch::Tensor& alphas,
                                        const ContextGroup& group);

// The scan's phase 2 over the slices (cummax_scan.h's forward_/backward_carries per (b, j) column
// of a contiguous float or double (N, B, d), CPU or GPU, same results):
//   slice_carries:        C_j, the running maximum entering slice j, from the maxima M.
//   slice_gradient_sums:  R_j, what reaches slice j's carry owner from slices j.., from G, M and C.
torch::Tensor slice_carries(const torch::Tensor& maxima);
torch::Tensor slice_gradient_sums(const torch::Tensor& G, const torch::Tensor& maxima,
                                  const torch::Tensor& carries);
// Their CUDA kernels (cummax_gate.cu); same contract.
void slice_carries_cuda(const torch::Tensor& maxima, torch::Tensor& carries);
void slice_gradient_sums_cuda(const torch::Tensor& G, const torch::Tensor& maxima,
                              const torch::Tensor& carries, torch::Tensor& R);

}  // namespace samout::ops
