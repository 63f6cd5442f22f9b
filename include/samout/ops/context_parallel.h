// cummax_gate over a sequence split across the ranks of a context-parallel group (SCAN.md with the
// chunks being ranks' slices): rank i of N holds positions [i T/N, (i+1) T/N) of every sequence.
//
// Every other layer of SamOut works per token; the running maximum is the one thing that crosses
// slices, and it needs only [B, d] summaries from the other ranks, never their activations:
//   forward:  all-gather the slices' maxima M_j; carry C_i = take_max over M_0..M_{i-1}, and the
//             local op runs with C_i as its state;
//   backward: all-gather G_j, the gradient each slice sends to the owner of its carry (the sum over
//             its carry-owned prefix); R_{i+1} = G_{i+1} + (slice i+1 wholly carry-owned ?
//             R_{i+2} : 0) is what reaches slice i from later ranks, released at the position that
//             owns slice i's last running maximum (unless slice i is wholly carry-owned too).
// So a layer exchanges O(N B d) values each way, independent of T.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>

#include "samout/ops/cummax_gate.h"

namespace samout::ops {

struct ContextGroup {
  int index = 0, size = 1;  // this rank's slice, and the number of slices
  // All-gather within the group: x (B, d) -> (size, B, d), slice j's x in row j. Same dtype and
  // device as x. Called once per layer in the forward and once in the backward, in layer order.
  std::function<torch::Tensor(const torch::Tensor&)> all_gather;
};

// y: this rank's slice (B, T/N, 3d); alphas (5,). No carried-in state (training and evaluation
// start every window afresh). Differentiable in y and alphas; the result's state is the local
// slice's last running maximum.
GateResult cummax_gate_context_parallel(const torch::Tensor& y, const torch::Tensor& alphas,
                                        const ContextGroup& group);

// The scan's phase 2 over the group's slices (cummax_scan.h's forward_carries and backward_carries,
// one column per (b, j) of an (N, B, d) tensor): the same code the kernels run over time chunks.
// float or double, contiguous, on the CPU or a GPU; results alike.
//   slice_carries:        C_j, the running maximum entering slice j, from the slices' maxima M.
//   slice_gradient_sums:  R_j, what reaches the owner of slice j's carry from slices j.., from the
//                         carry-owned gradient sums G and the forward's M and C.
torch::Tensor slice_carries(const torch::Tensor& maxima);
torch::Tensor slice_gradient_sums(const torch::Tensor& G, const torch::Tensor& maxima,
                                  const torch::Tensor& carries);
// Their CUDA kernels (cummax_gate.cu); same contract.
void slice_carries_cuda(const torch::Tensor& maxima, torch::Tensor& carries);
void slice_gradient_sums_cuda(const torch::Tensor& G, const torch::Tensor& maxima,
                              const torch::Tensor& carries, torch::Tensor& R);

}  // namespace samout::ops
