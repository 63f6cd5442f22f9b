// cummax_gate on CUDA, the host side: chunk plans, scratch tensors, checks, device guards, and the
// registered kernels. The kernels themselves are launched through cummax_gate_launch.h, one
// translation unit per dtype and direction (cummax_gate_<dtype>_<dir>.cu). A thread owns VEC
// channels (16-byte accesses when every row is 16-byte aligned, else 1) of one (batch row, chunk);
// enough chunks that one wave about fills every SM (gate_cuda::plan_chunks). No host
// synchronisation, and no tensor made from host data.
// Also context parallelism's two small scans over slices (slice_carries_cuda, ...).
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "cummax_gate_launch.h"
#include "samout/ops/context_parallel.h"
#include "samout/ops/cummax_gate.h"

namespace samout::ops {

namespace {

using gate_cuda::ChunkPlan;
using gate_cuda::GateArgs;
using gate_cuda::kThreads;

// Threads device `device` holds at once for the output and chunk kernels (the smaller: the
// forward's chunks are also the backward's). Occupancy is asked once per kernel (every GPU of a
// job is taken to be the same model); the SM count once per device.
template <typename scalar_t, int VEC>
int64_t resident_threads(c10::DeviceIndex device) {
  static const int blocks_per_sm =
      std::max(1, std::min(gate_cuda::ForwardKernels<scalar_t, VEC>::blocks_per_sm(),
                           gate_cuda::BackwardKernels<scalar_t, VEC>::blocks_per_sm()));
  const int sms = at::cuda::getDeviceProperties(device)->multiProcessorCount;
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

void check_sizes(const torch::Tensor& y) {
  TORCH_CHECK(y.size(1) <= std::numeric_limits<int32_t>::max(),
              "cummax_gate (CUDA): T must fit in 32 bits, got ", y.size(1));
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
                 : gate_cuda::forward_launch<VEC>(B, T, d,
                                                  resident_threads<scalar_t, VEC>(y.get_device()));
  const ChunkPlan plan = launch.plan;
  TORCH_CHECK(chunks == 0 || plan.K == chunks, "cummax_gate_forward_cuda: ", chunks,
              " chunks is not a chunking of T = ", T, " (plan_for_chunks gives ", plan.K, ")");
  torch::Tensor summaries, chunk_carry;
  if (plan.K > 1) summaries = torch::empty({B, plan.K, d}, y.options());  // every entry is written
  if (chunks > 0) chunk_carry = torch::empty({B, plan.K, d}, y.options());
  gate_cuda::ForwardKernels<scalar_t, VEC>::launch(
      gate_args<scalar_t>(y, alphas, plan), launch.grid,
      {ptr_or_null<scalar_t>(state), ptr_or_null<scalar_t>(summaries), out.data_ptr<scalar_t>(),
       ptr_or_null<scalar_t>(chunk_carry), last_m.data_ptr<scalar_t>()},
      at::cuda::getCurrentCUDAStream());
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
  TORCH_CHECK(plan.K == chunk_carry.size(1), "cummax_gate_backward_cuda: chunk_carry has ",
              chunk_carry.size(1), " chunks, which no forward of T = ", T, " chooses");
  const torch::TensorOptions acc_opts = y.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  // Every entry of these is written before it is read, so empty is enough.
  const torch::Tensor partials = torch::empty({launch.grid.blocks, 4}, acc_opts);
  const torch::Tensor sums = torch::empty({2, B, plan.K, d}, acc_opts);  // G_k, D_k
  const torch::Tensor owner = torch::empty({B, plan.K, d}, y.options().dtype(torch::kInt));
  gate_cuda::BackwardKernels<scalar_t, VEC>::launch(
      gate_args<scalar_t>(y, alphas, plan), launch.grid, gate_cuda::carry_blocks(B, d, plan.K),
      {grad_out.data_ptr<scalar_t>(),
       chunk_carry.data_ptr<scalar_t>(),
       grad_y.data_ptr<scalar_t>(),
       {sums[0].data_ptr<acc_t>(), sums[1].data_ptr<acc_t>(), owner.data_ptr<int32_t>()},
       partials.data_ptr<acc_t>(),
       grad_alphas.data_ptr<scalar_t>()},
      at::cuda::getCurrentCUDAStream());
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

}  // namespace

bool cuda_kernels_compiled() { return true; }

void slice_carries_cuda(const torch::Tensor& maxima, torch::Tensor& carries) {
  const int64_t N = maxima.size(0), cols = N ? maxima.numel() / N : 0;
  if (cols == 0) return;
  const c10::cuda::CUDAGuard guard(maxima.device());
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
  const c10::cuda::CUDAGuard guard(G.device());
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
  const c10::DeviceIndex device = y.get_device();
  int64_t K = 1;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "cummax_gate_cuda_chunks", [&] {
    constexpr int V = gate_cuda::kVecWidth<scalar_t>;
    K = gate_cuda::can_vectorize<scalar_t>(d, y.stride(0), y.stride(1), {y.data_ptr()})
            ? gate_cuda::forward_launch<V>(B, T, d, resident_threads<scalar_t, V>(device)).plan.K
            : gate_cuda::forward_launch<1>(B, T, d, resident_threads<scalar_t, 1>(device)).plan.K;
  });
  return K;
}

torch::Tensor cummax_gate_forward_cuda(const torch::Tensor& y, const torch::Tensor& alphas,
                                       const torch::Tensor& state, torch::Tensor& out,
                                       torch::Tensor& last_m, int64_t chunks) {
  const int64_t B = y.size(0), d = y.size(2) / 3;
  if (B * d == 0) return chunks > 0 ? torch::empty({B, chunks, d}, y.options()) : torch::Tensor();
  check_sizes(y);
  const c10::cuda::CUDAGuard guard(y.device());
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
  const c10::cuda::CUDAGuard guard(y.device());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "cummax_gate_backward_cuda", [&] {
    if (B * d == 0) {  // no chunk threads: the finishing block alone writes zero alpha gradients
      gate_cuda::BackwardKernels<scalar_t, 1>::launch(
          gate_args<scalar_t>(y, alphas, {1, y.size(1)}), gate_cuda::GridMap{}, 0,
          {nullptr,
           nullptr,
           nullptr,
           {nullptr, nullptr, nullptr},
           nullptr,
           grad_alphas.data_ptr<scalar_t>()},
          at::cuda::getCurrentCUDAStream());
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
  const c10::cuda::CUDAGuard guard(y.device());  // the outputs are allocated on y's device too
  GateCall c = gate_forward_call(y, alphas, state);
  torch::Tensor saved = cummax_gate_forward_cuda(c.y, c.alphas, c.state, c.out, c.last_m, chunks);
  if (!saved.defined()) saved = torch::empty({c.B, 0, c.d}, c.y.options());
  return {c.out, c.last_m, saved};
}

std::tuple<torch::Tensor, torch::Tensor> backward_kernel(const torch::Tensor& grad_out,
                                                         const torch::Tensor& y,
                                                         const torch::Tensor& alphas,
                                                         const torch::Tensor& saved) {
  const c10::cuda::CUDAGuard guard(y.device());
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
