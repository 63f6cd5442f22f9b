// gemv: y = x @ W^T + b for a handful of rows of x (batch-1..8 decoding), fp32 on the CPU.
//
// Why not at::linear: at batch 1, nn::Linear on the CPU is MKL's sgemm with M = 1, which streams
// the weights well below the memory bandwidth and does not scale to a second core. A decode step
// through the modules is 1.9-2.3x faster on this GEMV than on at::linear at 1 thread and 2.5-3.2x
// at 2 (bench_generate; bench/RESULTS.md, issue 14 item 2). A product with so few rows of x does
// ~2 flops per weight loaded, so it is bound by reading W once: what matters is that every weight
// row is streamed exactly once (for all rows of x together), sequentially, by all threads at once.
//
// The kernel: W is split by rows across threads (at::parallel_for, one contiguous chunk each, big
// enough to amortise a wake-up); each thread walks its chunk front to back, one weight row at a
// time, and multiplies it by all rows of x (x is a few KiB and stays in L1) with AVX2 FMA
// accumulators over K, then reduces them. One sequential stream per thread is what the hardware
// prefetcher follows best: on Zen 3 it reads faster than torch's own sum() over the same weights,
// where blocks of 4 rows (4 interleaved streams) were ~20% slower. The AVX2 path is compiled with
// a target attribute and chosen at run time; a portable loop runs without AVX2+FMA and for the
// K % 8 tail.
//
// Inference only: the fast path is not differentiable. When autograd would record the product
// (grad mode on and an input requires grad), linear_rows calls at::linear instead.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace samout::ops {

// The most rows of x the fast path takes; more go to at::linear (a real GEMM).
constexpr int64_t kGemvMaxRows = 8;

// x: (..., K) with at most kGemvMaxRows rows in all; weight: (N, K); bias: none or (N,).
// Returns x @ weight^T + bias, shaped (..., N). Takes the fast path when linear_rows_fast() is
// true, else at::linear (CUDA, non-fp32, more rows, non-contiguous weight, autograd, ...).
torch::Tensor linear_rows(const torch::Tensor& x, const torch::Tensor& weight,
                          const c10::optional<torch::Tensor>& bias = c10::nullopt);

// Whether linear_rows takes the fast kernel for these arguments.
bool linear_rows_fast(const torch::Tensor& x, const torch::Tensor& weight,
                      const c10::optional<torch::Tensor>& bias = c10::nullopt);

// The kernel itself on raw row-major buffers:
// y[r][n] = sum_k x[r][k] * w[n][k] (+ bias[n] when bias is non-null), r < rows, n < N.
// x: rows x K (row stride K), w: N x K (row stride K), y: rows x N (row stride N), y must not
// overlap x or w. Any rows >= 1 works: each weight row is read from memory once for all rows of x
// (groups of up to 3 rows of x take turns on it while it is in L1). A row of y has the same bits
// whatever the other rows of x and the thread count. Runs on at::get_num_threads() threads.
void gemv_f32(const float* x, int64_t rows, int64_t K, const float* w, int64_t N, const float* bias,
              float* y);

// True when the AVX2+FMA kernel is in use on this machine.
bool gemv_has_avx2();

}  // namespace samout::ops
