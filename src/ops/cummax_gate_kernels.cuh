// cummax_gate's CUDA kernels and their launchers (cummax_gate_launch.h), included only by the
// per-dtype translation units cummax_gate_<dtype>_<dir>.cu, which instantiate them. Each thread's
// work is in samout/ops/cummax_scan_cuda.cuh (also run on the CPU by
// cummax_gate_cuda_emulation_test); this file maps blocks and threads onto it:
//   forward:  summary_kernel (chunk maxima M_k; skipped when K = 1), then output_kernel (carries
//             C_k from the M, then out; saves C_k (B, K, d) for the backward)
//   backward: chunk_kernel (per chunk from C_k, recomputing m: dL/dy, the chunk's records,
//             per-block alpha partials), then finish_kernel (reverse segmented sum R_k over
//             chunks, rewriting dc at each chunk's end owner; one extra block adds the alphas)
// Deterministic, no host synchronisation: fixed-order sums (time order per thread, shuffle tree
// then warps in order per block, blocks in order), no float atomics.
#pragma once

#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "cummax_gate_launch.h"

namespace samout::ops::gate_cuda {

static_assert(kThreads % kWarp == 0 && (kThreads & (kThreads - 1)) == 0,
              "the block reductions need a power-of-two block of whole warps");

// Resident blocks per SM that output_kernel and chunk_kernel ask ptxas to allow (__launch_bounds__'
// second argument caps the registers at 64K / (blocks * kThreads)): the most that builds with no
// spill and no stack frame on sm_90 (CI compiles with -warn-spills -Werror). The registers and
// blocks ptxas gives are in bench/RESULTS.md ("Occupancy"); the emulation test plans with them.
template <typename scalar_t, int VEC>
constexpr int kOutputMinBlocks = VEC == 1 ? 4 : 2;
template <typename scalar_t, int VEC>
constexpr int kChunkMinBlocks = VEC == 1                           ? 4
                                : std::is_same_v<scalar_t, float>  ? 4
                                : std::is_same_v<scalar_t, double> ? 3
                                                                   : 2;

namespace {

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    summary_kernel(GateArgs<scalar_t> g, GridMap gm, scalar_t* __restrict__ summaries) {
  Work w;
  if (!work_of(gm, blockIdx.x, threadIdx.x, w)) return;
  summary_thread<scalar_t, VEC>(g, w.b, w.k, w.grp, summaries);
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads, (kOutputMinBlocks<scalar_t, VEC>))
    output_kernel(GateArgs<scalar_t> g, GridMap gm, const scalar_t* __restrict__ state,
                  const scalar_t* __restrict__ summaries, scalar_t* __restrict__ out,
                  scalar_t* __restrict__ chunk_carry, scalar_t* __restrict__ last_m) {
  Work w;
  if (!work_of(gm, blockIdx.x, threadIdx.x, w)) return;
  output_thread<scalar_t, VEC>(g, w.b, w.k, w.grp, state, summaries, out, chunk_carry, last_m);
}

// The block's four alpha sums into partials[blockIdx.x]: a shuffle tree per warp, then the warps in
// order. Every thread of the block must call it.
template <typename acc_t>
__device__ __forceinline__ void block_partials(AlphaSums<acc_t> s, acc_t* __restrict__ partials) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) {
#pragma unroll
    for (int q = 0; q < 4; ++q) s.v[q] += __shfl_down_sync(0xffffffffu, s.v[q], off);
  }
  __shared__ acc_t warp_sums[kThreads / kWarp][4];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) {
#pragma unroll
    for (int q = 0; q < 4; ++q) warp_sums[warp][q] = s.v[q];
  }
  __syncthreads();
  if (threadIdx.x < 4) {
    acc_t t = acc_t(0);
#pragma unroll
    for (int w = 0; w < kThreads / kWarp; ++w) t += warp_sums[w][threadIdx.x];
    partials[static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x] = t;
  }
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads, (kChunkMinBlocks<scalar_t, VEC>))
    chunk_kernel(GateArgs<scalar_t> g, GridMap gm, const scalar_t* __restrict__ grad_out,
                 const scalar_t* __restrict__ chunk_carry, scalar_t* __restrict__ grad_y,
                 ChunkRecords<at::opmath_type<scalar_t>> rec,
                 at::opmath_type<scalar_t>* __restrict__ partials) {
  using acc_t = at::opmath_type<scalar_t>;
  AlphaSums<acc_t> s{{acc_t(0), acc_t(0), acc_t(0), acc_t(0)}};
  Work w;
  // No early return: every thread takes part in the block's reduction.
  if (work_of(gm, blockIdx.x, threadIdx.x, w)) {
    s = backward_chunk_thread<scalar_t, VEC>(g, w.b, w.k, w.grp, grad_out, chunk_carry, grad_y,
                                             rec);
  }
  block_partials(s, partials);
}

// Blocks [0, carry_blocks): the carries across chunks, a thread per (batch row, channel). The last
// block writes dL/dalphas (zeros without partials): strided partial sums per thread, then a tree.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    finish_kernel(int64_t B, int64_t T, int64_t d, int64_t K, const acc_t* __restrict__ carried,
                  const acc_t* __restrict__ open_sum, const int32_t* __restrict__ owner,
                  scalar_t* __restrict__ grad_y, int64_t carry_blocks,
                  const acc_t* __restrict__ partials, int64_t num_partials,
                  scalar_t* __restrict__ grad_alphas) {
  if (blockIdx.x < carry_blocks) {
    const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
    if (idx < B * d) {
      carry_thread<scalar_t, acc_t>(T, d, K, carried, open_sum, owner, grad_y, idx / d, idx % d);
    }
    return;  // block-uniform: the finishing block below is the last one
  }
  __shared__ acc_t sums[4][kThreads];
  const AlphaSums<acc_t> mine = strided_partial_sums(partials, num_partials, threadIdx.x, kThreads);
#pragma unroll
  for (int q = 0; q < 4; ++q) sums[q][threadIdx.x] = mine.v[q];
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
#pragma unroll
      for (int q = 0; q < 4; ++q) sums[q][threadIdx.x] += sums[q][threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const AlphaSums<acc_t> total{{sums[0][0], sums[1][0], sums[2][0], sums[3][0]}};
    write_alpha_grads(total, grad_alphas);
  }
}

// A 1-D grid of `blocks` blocks; gridDim.x is limited to 2^31 - 1.
unsigned int grid_size(int64_t blocks) {
  TORCH_CHECK(blocks > 0 && blocks <= std::numeric_limits<int32_t>::max(),
              "cummax_gate: too many blocks for one grid (", blocks, ")");
  return static_cast<unsigned int>(blocks);
}

template <typename Kernel>
int occupancy(Kernel kernel) {
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, 0));
  return blocks;
}

}  // namespace

template <typename scalar_t, int VEC>
int ForwardKernels<scalar_t, VEC>::blocks_per_sm() {
  return occupancy(output_kernel<scalar_t, VEC>);
}

template <typename scalar_t, int VEC>
void ForwardKernels<scalar_t, VEC>::launch(const GateArgs<scalar_t>& g, const GridMap& gm,
                                           const ForwardPointers<scalar_t>& p,
                                           cudaStream_t stream) {
  if (g.K > 1) {
    summary_kernel<scalar_t, VEC>
        <<<grid_size(gm.blocks), kThreads, 0, stream>>>(g, gm, p.summaries);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  output_kernel<scalar_t, VEC><<<grid_size(gm.blocks), kThreads, 0, stream>>>(
      g, gm, p.state, p.summaries, p.out, p.chunk_carry, p.last_m);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int VEC>
int BackwardKernels<scalar_t, VEC>::blocks_per_sm() {
  return occupancy(chunk_kernel<scalar_t, VEC>);
}

template <typename scalar_t, int VEC>
void BackwardKernels<scalar_t, VEC>::launch(const GateArgs<scalar_t>& g, const GridMap& gm,
                                            int64_t carry_blocks,
                                            const BackwardPointers<scalar_t>& p,
                                            cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  if (gm.blocks > 0) {
    chunk_kernel<scalar_t, VEC><<<grid_size(gm.blocks), kThreads, 0, stream>>>(
        g, gm, p.grad_out, p.chunk_carry, p.grad_y, p.rec, p.partials);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  finish_kernel<scalar_t, acc_t><<<grid_size(carry_blocks + 1), kThreads, 0, stream>>>(
      g.B, g.T, g.d, g.K, p.rec.carried, p.rec.open_sum, p.rec.owner, p.grad_y, carry_blocks,
      p.partials, gm.blocks, p.grad_alphas);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace samout::ops::gate_cuda
