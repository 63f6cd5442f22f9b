// The fused cummax_gate CUDA kernels: a chunked scan over time, bandwidth-bound. Each thread's work
// is in samout/ops/cummax_scan_cuda.cuh (also run on the CPU by cummax_gate_cuda_emulation_test);
// this file maps blocks and threads onto it and launches:
//   forward:  summary_kernel (chunk maxima M_k; skipped when K = 1), then output_kernel (carries
//             C_k from the M, then out; saves C_k (B, K, d) for the backward)
//   backward: chunk_kernel (per chunk from C_k, recomputing m: dL/dy, the chunk's records,
//             per-block alpha partials), then finish_kernel (reverse segmented sum R_k over
//             chunks, rewriting dc at each chunk's end owner; one extra block adds the alphas)
// A thread owns VEC channels (16-byte accesses when every row is 16-byte aligned, else 1) of one
// (batch row, chunk); enough chunks that one wave about fills every SM (gate_cuda::plan_chunks).
// Deterministic, no host synchronisation: fixed-order sums (time order per thread, shuffle tree
// then warps in order per block, blocks in order), no float atomics, no tensors from host data.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "samout/ops/context_parallel.h"
#include "samout/ops/cummax_gate.h"
#include "samout/ops/cummax_scan_cuda.cuh"

namespace samout::ops {

namespace {

using gate_cuda::AlphaSums;
using gate_cuda::ChunkPlan;
using gate_cuda::ChunkRecords;
using gate_cuda::GateArgs;
using gate_cuda::GridMap;
using gate_cuda::kThreads;
using gate_cuda::kWarp;
static_assert(kThreads % kWarp == 0 && (kThreads & (kThreads - 1)) == 0,
              "the block reductions need a power-of-two block of whole warps");

// ---- Kernels ------------------------------------------------------------------------------------

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    summary_kernel(GateArgs<scalar_t> g, GridMap gm, scalar_t* __restrict__ summaries) {
  gate_cuda::Work w;
  if (!gate_cuda::work_of(gm, blockIdx.x, threadIdx.x, w)) return;
  gate_cuda::summary_thread<scalar_t, VEC>(g, w.b, w.k, w.grp, summaries);
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    output_kernel(GateArgs<scalar_t> g, GridMap gm, const scalar_t* __restrict__ state,
                  const scalar_t* __restrict__ summaries, scalar_t* __restrict__ out,
                  scalar_t* __restrict__ chunk_carry, scalar_t* __restrict__ last_m) {
  gate_cuda::Work w;
  if (!gate_cuda::work_of(gm, blockIdx.x, threadIdx.x, w)) return;
  gate_cuda::output_thread<scalar_t, VEC>(g, w.b, w.k, w.grp, state, summaries, out, chunk_carry,
                                          last_m);
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
__global__ void __launch_bounds__(kThreads)
    chunk_kernel(GateArgs<scalar_t> g, GridMap gm, const scalar_t* __restrict__ grad_out,
                 const scalar_t* __restrict__ chunk_carry, scalar_t* __restrict__ grad_y,
                 ChunkRecords<at::opmath_type<scalar_t>> rec,
                 at::opmath_type<scalar_t>* __restrict__ partials) {
  using acc_t = at::opmath_type<scalar_t>;
  AlphaSums<acc_t> s{{acc_t(0), acc_t(0), acc_t(0), acc_t(0)}};
  gate_cuda::Work w;
  // No early return: every thread takes part in the block's reduction.
  if (gate_cuda::work_of(gm, blockIdx.x, threadIdx.x, w)) {
    s = gate_cuda::backward_chunk_thread<scalar_t, VEC>(g, w.b, w.k, w.grp, grad_out, chunk_carry,
                                                        grad_y, rec);
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
      gate_cuda::carry_thread<scalar_t, acc_t>(T, d, K, carried, open_sum, owner, grad_y, idx / d,
                                               idx % d);
    }
    return;  // block-uniform: the finishing block below is the last one
  }
  __shared__ acc_t sums[4][kThreads];
  const AlphaSums<acc_t> mine =
      gate_cuda::strided_partial_sums(partials, num_partials, threadIdx.x, kThreads);
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
    gate_cuda::write_alpha_grads(total, grad_alphas);
  }
}

// ---- Launch helpers -----------------------------------------------------------------------------

// A 1-D grid of `blocks` blocks; gridDim.x is limited to 2^31 - 1.
unsigned int grid_size(int64_t blocks) {
  TORCH_CHECK(blocks > 0 && blocks <= std::numeric_limits<int32_t>::max(),
              "cummax_gate: too many blocks for one grid (", blocks, ")");
  return static_cast<unsigned int>(blocks);
}

// Threads the current GPU holds at once for the output and chunk kernels (the smaller: the
// forward's chunks are also the backward's). Occupancy is asked once per kernel.
template <typename scalar_t, int VEC>
int64_t resident_threads() {
  static const int blocks_per_sm = [] {
    int fwd = 0, bwd = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fwd, output_kernel<scalar_t, VEC>,
                                                                 kThreads, 0));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bwd, chunk_kernel<scalar_t, VEC>,
                                                                 kThreads, 0));
    return std::max(1, std::min(fwd, bwd));
  }();
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<int64_t>(blocks_per_sm) * kThreads * sms;
}

template <typename scalar_t>
scalar_t* ptr_or_null(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
}

template <typename scalar_t>
GateArgs<scalar_t> gate_args(const torch::Tensor& y, const torch::Tensor& alphas, ChunkPlan plan) {
  return {y.data_ptr<scalar_t>(),
          alphas.data_ptr<scalar_t>(),
          y.size(0),
          y.size(1),
          y.size(2) / 3,
          y.stride(0),
          y.stride(1),
          plan.K,
          plan.L};
}

template <typename scalar_t, int VEC>
torch::Tensor forward_impl(const torch::Tensor& y, const torch::Tensor& alphas,
                           const torch::Tensor& state, torch::Tensor& out, torch::Tensor& last_m,
                           int64_t chunks) {
  const int64_t B = y.size(0), T = y.size(1), d = y.size(2) / 3;
  // With a backward to come, the caller's chunking (it shaped the saved tensor); else one that
  // fills this GPU.
  const gate_cuda::Launch launch =
      chunks > 0 ? gate_cuda::backward_launch<VEC>(B, T, d, chunks)
                 : gate_cuda::forward_launch<VEC>(B, T, d, resident_threads<scalar_t, VEC>());
  const ChunkPlan plan = launch.plan;
  TORCH_CHECK(chunks == 0 || plan.K == chunks, "cummax_gate_forward_cuda: ", chunks,
              " chunks is not a chunking of T = ", T, " (plan_for_chunks gives ", plan.K, ")");
  const GridMap gm = launch.grid;
  const GateArgs<scalar_t> g = gate_args<scalar_t>(y, alphas, plan);
  auto stream = at::cuda::getCurrentCUDAStream();
  torch::Tensor summaries, chunk_carry;
  if (plan.K > 1) {
    summaries = torch::empty({B, plan.K, d}, y.options());  // every entry is written
    summary_kernel<scalar_t, VEC>
        <<<grid_size(gm.blocks), kThreads, 0, stream>>>(g, gm, summaries.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (chunks > 0) chunk_carry = torch::empty({B, plan.K, d}, y.options());
  output_kernel<scalar_t, VEC><<<grid_size(gm.blocks), kThreads, 0, stream>>>(
      g, gm, ptr_or_null<scalar_t>(state), ptr_or_null<scalar_t>(summaries),
      out.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(chunk_carry), last_m.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return chunk_carry;
}

template <typename scalar_t, int VEC>
void backward_impl(const torch::Tensor& grad_out, const torch::Tensor& y,
                   const torch::Tensor& alphas, const torch::Tensor& chunk_carry,
                   torch::Tensor& grad_y, torch::Tensor& grad_alphas) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = y.size(0), T = y.size(1), d = y.size(2) / 3;
  const gate_cuda::Launch launch = gate_cuda::backward_launch<VEC>(B, T, d, chunk_carry.size(1));
  const ChunkPlan plan = launch.plan;
  const GridMap gm = launch.grid;
  TORCH_CHECK(plan.K == chunk_carry.size(1), "cummax_gate_backward_cuda: chunk_carry has ",
              chunk_carry.size(1), " chunks, which no forward of T = ", T, " chooses");
  const GateArgs<scalar_t> g = gate_args<scalar_t>(y, alphas, plan);
  auto stream = at::cuda::getCurrentCUDAStream();
  const torch::TensorOptions acc_opts = y.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  // Every entry of these is written before it is read, so empty is enough.
  const torch::Tensor partials = torch::empty({gm.blocks, 4}, acc_opts);
  const torch::Tensor sums = torch::empty({2, B, plan.K, d}, acc_opts);  // G_k, D_k
  const torch::Tensor owner = torch::empty({B, plan.K, d}, y.options().dtype(torch::kInt));
  const ChunkRecords<acc_t> rec{sums[0].data_ptr<acc_t>(), sums[1].data_ptr<acc_t>(),
                                owner.data_ptr<int32_t>()};
  chunk_kernel<scalar_t, VEC><<<grid_size(gm.blocks), kThreads, 0, stream>>>(
      g, gm, grad_out.data_ptr<scalar_t>(), chunk_carry.data_ptr<scalar_t>(),
      grad_y.data_ptr<scalar_t>(), rec, partials.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t carry_blocks = gate_cuda::carry_blocks(B, d, plan.K);
  finish_kernel<scalar_t, acc_t><<<grid_size(carry_blocks + 1), kThreads, 0, stream>>>(
      B, T, d, plan.K, rec.carried, rec.open_sum, rec.owner, grad_y.data_ptr<scalar_t>(),
      carry_blocks, partials.data_ptr<acc_t>(), gm.blocks, grad_alphas.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Context parallelism's scans over the N slices of a group: one thread per (b, j) column of (N, B, d).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    slice_carries_kernel(const T* __restrict__ M, T* __restrict__ C, int64_t N, int64_t cols) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (col < cols) scan::forward_carries(M + col, N, scan::neg_inf<T>(), C + col, cols);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    slice_gradient_sums_kernel(const T* __restrict__ G, const T* __restrict__ M,
                               const T* __restrict__ C, T* __restrict__ R, int64_t N,
                               int64_t cols) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (col < cols) scan::backward_carries(G + col, M + col, C + col, N, R + col, cols);
}

unsigned column_blocks(int64_t cols) {
  return static_cast<unsigned>((cols + kThreads - 1) / kThreads);
}

void check_sizes(const torch::Tensor& y) {
  TORCH_CHECK(y.size(1) <= std::numeric_limits<int32_t>::max(),
              "cummax_gate (CUDA): T must fit in 32 bits, got ", y.size(1));
}

}  // namespace

bool cuda_kernels_compiled() { return true; }

void slice_carries_cuda(const torch::Tensor& maxima, torch::Tensor& carries) {
  const int64_t N = maxima.size(0), cols = N ? maxima.numel() / N : 0;
  if (cols == 0) return;
  AT_DISPATCH_FLOATING_TYPES(maxima.scalar_type(), "slice_carries_cuda", [&] {
    slice_carries_kernel<scalar_t>
        <<<column_blocks(cols), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            maxima.data_ptr<scalar_t>(), carries.data_ptr<scalar_t>(), N, cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void slice_gradient_sums_cuda(const torch::Tensor& G, const torch::Tensor& maxima,
                              const torch::Tensor& carries, torch::Tensor& R) {
  const int64_t N = G.size(0), cols = N ? G.numel() / N : 0;
  if (cols == 0) return;
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "slice_gradient_sums_cuda", [&] {
    slice_gradient_sums_kernel<scalar_t>
        <<<column_blocks(cols), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            G.data_ptr<scalar_t>(), maxima.data_ptr<scalar_t>(), carries.data_ptr<scalar_t>(),
            R.data_ptr<scalar_t>(), N, cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

int64_t cummax_gate_cuda_chunks(const torch::Tensor& y) {
  const int64_t B = y.size(0), T = y.size(1), d = y.size(2) / 3;
  if (B * d == 0) return 1;
  check_sizes(y);
  int64_t K = 1;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "cummax_gate_cuda_chunks", [&] {
    // The storage offset stands for y's pointer (the caching allocator aligns every block), so a
    // fake tensor gives the same answer.
    constexpr int V = gate_cuda::kVecWidth<scalar_t>;
    const auto* offset = reinterpret_cast<const void*>(y.storage_offset() * y.element_size());
    K = gate_cuda::can_vectorize<scalar_t>(d, y.stride(0), y.stride(1), {offset})
            ? gate_cuda::forward_launch<V>(B, T, d, resident_threads<scalar_t, V>()).plan.K
            : gate_cuda::forward_launch<1>(B, T, d, resident_threads<scalar_t, 1>()).plan.K;
  });
  return K;
}

torch::Tensor cummax_gate_forward_cuda(const torch::Tensor& y, const torch::Tensor& alphas,
                                       const torch::Tensor& state, torch::Tensor& out,
                                       torch::Tensor& last_m, int64_t chunks) {
  const int64_t B = y.size(0), d = y.size(2) / 3;
  if (B * d == 0) return chunks > 0 ? torch::empty({B, chunks, d}, y.options()) : torch::Tensor();
  check_sizes(y);
  torch::Tensor chunk_carry;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "cummax_gate_forward_cuda", [&] {
    if (gate_cuda::can_vectorize<scalar_t>(
            d, y.stride(0), y.stride(1),
            {y.data_ptr(), out.data_ptr(), state.defined() ? state.data_ptr() : nullptr,
             last_m.data_ptr()})) {
      chunk_carry = forward_impl<scalar_t, gate_cuda::kVecWidth<scalar_t>>(y, alphas, state, out,
                                                                           last_m, chunks);
    } else {
      chunk_carry = forward_impl<scalar_t, 1>(y, alphas, state, out, last_m, chunks);
    }
  });
  return chunk_carry;
}

void cummax_gate_backward_cuda(const torch::Tensor& grad_out, const torch::Tensor& y,
                               const torch::Tensor& alphas, const torch::Tensor& chunk_carry,
                               torch::Tensor& grad_y, torch::Tensor& grad_alphas) {
  const int64_t B = y.size(0), d = y.size(2) / 3;
  TORCH_CHECK(grad_alphas.is_contiguous() && grad_alphas.numel() == 5,
              "cummax_gate_backward_cuda: grad_alphas must be a contiguous (5,)");
  TORCH_CHECK(chunk_carry.dim() == 3 && chunk_carry.size(0) == B && chunk_carry.size(2) == d &&
                  chunk_carry.size(1) >= 1 && chunk_carry.is_contiguous(),
              "cummax_gate_backward_cuda: chunk_carry must be the forward's contiguous (B, K, d)");
  check_sizes(y);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "cummax_gate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (B * d == 0) {  // no chunk threads: the finishing block alone writes zero alpha gradients
      finish_kernel<scalar_t, acc_t><<<1, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          B, y.size(1), d, 1, nullptr, nullptr, nullptr, nullptr, 0, nullptr, 0,
          grad_alphas.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    if (gate_cuda::can_vectorize<scalar_t>(
            d, y.stride(0), y.stride(1),
            {y.data_ptr(), grad_out.data_ptr(), chunk_carry.data_ptr(), grad_y.data_ptr()})) {
      backward_impl<scalar_t, gate_cuda::kVecWidth<scalar_t>>(grad_out, y, alphas, chunk_carry,
                                                              grad_y, grad_alphas);
    } else {
      backward_impl<scalar_t, 1>(grad_out, y, alphas, chunk_carry, grad_y, grad_alphas);
    }
  });
}

namespace {

// The registered forward and backward ops' CUDA kernels.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> forward_kernel(
    const torch::Tensor& y, const torch::Tensor& alphas, const std::optional<torch::Tensor>& state,
    int64_t chunks) {
  GateCall c = gate_forward_call(y, alphas, state);
  torch::Tensor saved = cummax_gate_forward_cuda(c.y, c.alphas, c.state, c.out, c.last_m, chunks);
  if (!saved.defined()) saved = torch::empty({c.B, 0, c.d}, c.y.options());
  return {c.out, c.last_m, saved};
}

std::tuple<torch::Tensor, torch::Tensor> backward_kernel(const torch::Tensor& grad_out,
                                                         const torch::Tensor& y,
                                                         const torch::Tensor& alphas,
                                                         const torch::Tensor& saved) {
  GateCall c = gate_backward_call(grad_out, y, alphas);
  cummax_gate_backward_cuda(c.grad_out, c.y, c.alphas, saved.contiguous(), c.grad_y, c.grad_alphas);
  return {c.grad_y, c.grad_alphas};
}

}  // namespace

TORCH_LIBRARY_IMPL(samout, CUDA, m) {
  m.impl("cummax_gate_forward", TORCH_FN(forward_kernel));
  m.impl("cummax_gate_backward", TORCH_FN(backward_kernel));
}

}  // namespace samout::ops
