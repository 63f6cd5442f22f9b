// gemv: y = x @ W^T + b for a handful of rows of x (batch-1..8 decoding), fp32 on the CPU.
//
// Why not at::linear: at batch 1 it is MKL's sgemm with M = 1, which streams the weights well below
// memory bandwidth and does not scale to a second core; decode steps are 1.9-2.3x faster with this
// GEMV at 1 thread, 2.5-3.2x at 2 (bench_generate; bench/RESULTS.md, issue 14 item 2). So few rows
// are bound by reading W: each thread streams its contiguous share of W's rows once, sequentially
// (what the prefetcher follows best), against all rows of x (in L1) with AVX2 FMA accumulators.
// AVX2 is chosen at run time; a portable loop covers other CPUs and the K % 8 tail.
// Inference only: when autograd would record the product, linear_rows calls at::linear instead.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace samout::ops {

// The most rows of x the fast path takes; more go to at::linear (a real GEMM).
constexpr int64_t kGemvMaxRows = 8;

// x: (..., K); weight: (N, K); bias: none or (N,). Returns (..., N): the fast kernel when
// linear_rows_fast(), else at::linear (CUDA, non-fp32, more rows, non-contiguous weight, autograd).
torch::Tensor linear_rows(const torch::Tensor& x, const torch::Tensor& weight,
                          const c10::optional<torch::Tensor>& bias = c10::nullopt);

// Whether linear_rows takes the fast kernel for these arguments.
bool linear_rows_fast(const torch::Tensor& x, const torch::Tensor& weight,
                      const c10::optional<torch::Tensor>& bias = c10::nullopt);

// The kernel on raw row-major buffers: y[r][n] = sum_k x[r][k] * w[n][k] (+ bias[n] if non-null);
// x: rows x K, w: N x K, y: rows x N, not overlapping x or w. Any rows >= 1 (groups of up to 3 rows
// of x take turns on each weight row while it is in L1). A row of y has the same bits whatever the
// other rows and the thread count (at::get_num_threads()).
void gemv_f32(const float* x, int64_t rows, int64_t K, const float* w, int64_t N, const float* bias,
              float* y);

// True when the AVX2+FMA kernel is in use on this machine.
bool gemv_has_avx2();

}  // namespace samout::ops
