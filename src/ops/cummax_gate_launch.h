// cummax_gate's CUDA kernels as cummax_gate.cu calls them: one launcher per (dtype, vector width,
// direction). Each dtype and direction is its own translation unit (cummax_gate_<dtype>_<dir>.cu,
// defined by cummax_gate_kernels.cuh), so nvcc compiles them in parallel, and none of them includes
// ATen's host headers; cummax_gate.cu plans the chunks, allocates, and checks. Private to src/ops.
#pragma once

#include <cuda_runtime_api.h>

#include "samout/ops/cummax_scan_cuda.cuh"

namespace samout::ops::gate_cuda {

// The forward's device pointers; null where the launch has none.
template <typename scalar_t>
struct ForwardPointers {
  const scalar_t* state;  // (B, d), or null: no carried state
  scalar_t* summaries;    // (B, K, d) scratch when K > 1
  scalar_t* out;          // (B, T, d)
  scalar_t* chunk_carry;  // (B, K, d) saved for the backward, or null (inference)
  scalar_t* last_m;       // (B, d)
};

template <typename scalar_t>
struct BackwardPointers {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* grad_out;     // (B, T, d) contiguous
  const scalar_t* chunk_carry;  // (B, K, d)
  scalar_t* grad_y;             // (B, T, 3d)
  ChunkRecords<acc_t> rec;      // (B, K, d) each
  acc_t* partials;              // (grid blocks, 4)
  scalar_t* grad_alphas;        // (5,)
};

// output_kernel (after summary_kernel when K > 1).
template <typename scalar_t, int VEC>
struct ForwardKernels {
  static int blocks_per_sm();  // output_kernel's resident blocks per SM on the current device
  static void launch(const GateArgs<scalar_t>& g, const GridMap& gm,
                     const ForwardPointers<scalar_t>& p, cudaStream_t stream);
};

// chunk_kernel (none when gm.blocks = 0, i.e. B * d = 0), then finish_kernel's carry blocks and its
// last block, which writes the alpha gradients.
template <typename scalar_t, int VEC>
struct BackwardKernels {
  static int blocks_per_sm();  // chunk_kernel's
  static void launch(const GateArgs<scalar_t>& g, const GridMap& gm, int64_t carry_blocks,
                     const BackwardPointers<scalar_t>& p, cudaStream_t stream);
};

}  // namespace samout::ops::gate_cuda
