// gemm_cpu: our own fp32 matrix product for the CPU, C = beta * C + A @ B.
//
// Why not at::mm: libtorch's CPU BLAS is MKL, and MKL's sgemm runs SamOut's shapes on AMD Zen at
// 60-118 GFLOP/s on 2 cores (the head's forward, (1568 x 512) @ (512 x 8460), at 61), while the same
// machine sustains ~130 with an AVX2 kernel (bench/ops/bench_gemm). At the seed's setting three
// quarters of a training step is GEMM, so this is where CPU training time goes.
//
// The design is the classic Goto/BLIS one: B is packed into KC x NR column panels and A into
// MR x KC row panels (packing also absorbs any transposition, so A and B may be arbitrary strided
// views such as w.t() or dy.t()), and a 6 x 16 register-tile micro-kernel of AVX2 FMAs does the
// arithmetic. The AVX2 path is chosen at run time; without AVX2+FMA a portable kernel runs the same
// blocking.
//
// Every element of C is accumulated in the same order (k ascending, in KC blocks) whatever the
// thread count or the row's position in the batch, so results are deterministic and do not depend on
// how the work is split.
#pragma once

#include <torch/torch.h>

namespace samout::ops {

// A: (M, K), B: (K, N), C: (M, N); fp32 CPU tensors, C with unit stride along N. With beta == 0, C
// is only written (it may hold garbage or NaN). Runs on at::get_num_threads() threads.
void gemm_cpu(const torch::Tensor& A, const torch::Tensor& B, torch::Tensor& C, float beta = 0.0f);

// True when the AVX2+FMA micro-kernel is in use on this machine.
bool gemm_cpu_has_avx2();

}  // namespace samout::ops
