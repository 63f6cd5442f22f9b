// The fused cummax_gate kernels for CUDA: one thread per (batch row, channel), one pass over time.
//
// Adjacent threads own adjacent channels, so every time step is a coalesced read of a, b and c.
// This is the straightforward first version behind the dispatch point; the GPU-speed issue replaces
// it with a chunked two-pass scan for small B*d and long T. The reference is the composite
// (cummax_gate_composite); tests/ops/cummax_gate_cuda_test.cpp compares these kernels with the CPU
// kernel wherever a GPU exists.
//
// The backward is free of host synchronisation and bitwise reproducible: the alpha gradients are
// summed per block into a (blocks, 4) buffer, and one small kernel adds those partials in a fixed
// order and writes dL/dalphas itself (no float atomics, no tensor built from host data).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <limits>

#include "samout/ops/cummax_gate.h"

namespace samout::ops {

namespace {

constexpr int kThreads = 256;  // per block, every kernel here
constexpr int kWarp = 32;
static_assert(kThreads % kWarp == 0 && (kThreads & (kThreads - 1)) == 0,
              "the block reductions need a power-of-two block of whole warps");

// torch.cummax's update rule: take the new value when it is >= the running max (ties go to the
// latest position) or when it is NaN (NaN propagates). The same rules as cummax_gate_cpu.cpp.
template <typename T>
__device__ __forceinline__ T take_max(T running, T v) {
  return (v >= running || v != v) ? v : running;
}

// True when position t holds the running maximum m_t itself, given c_t and m_t (see the CPU file).
template <typename T>
__device__ __forceinline__ bool is_argmax(T c, T m) {
  return c == m || c != c;
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ alphas,
                               const scalar_t* __restrict__ state, scalar_t* __restrict__ out,
                               scalar_t* __restrict__ m_saved, scalar_t* __restrict__ last_m,
                               int64_t B, int64_t T, int64_t d, int64_t sB, int64_t sT) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= B * d) return;
  const int64_t b = idx / d, j = idx % d;
  const acc_t a1 = alphas[0], a3 = alphas[2], a4 = alphas[3];
  const acc_t a25 = acc_t(alphas[1]) + acc_t(alphas[4]);
  acc_t m = state ? acc_t(state[idx]) : -INFINITY;
  const scalar_t* yb = y + b * sB + j;
  for (int64_t t = 0; t < T; ++t) {
    const acc_t av = yb[t * sT], bv = yb[t * sT + d], cv = yb[t * sT + 2 * d];
    m = take_max(m, cv);
    const int64_t o = (b * T + t) * d + j;
    out[o] = scalar_t((av + bv + cv + a25) * m + a3 * av + a1 * bv + a4 * cv);
    if (m_saved) m_saved[o] = scalar_t(m);
  }
  last_m[idx] = scalar_t(m);
}

// One thread per (batch row, channel), walking time backwards. Besides dL/dy, each block leaves
// its partial sums of the alpha gradients in partials[blockIdx.x] = [g*b, g*m, g*a, g*c] (acc_t);
// finish_alphas_kernel adds them up. Every sum runs in a fixed order (thread: over time; warp:
// shuffle tree; block: warps in order; finish: see there), so the result is bitwise reproducible:
// no atomics.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ y,
                    const scalar_t* __restrict__ alphas, const scalar_t* __restrict__ m_saved,
                    scalar_t* __restrict__ grad_y, acc_t* __restrict__ partials, int64_t B,
                    int64_t T, int64_t d, int64_t sB, int64_t sT) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  acc_t sb = 0, sm = 0, sa = 0, sc = 0;
  if (idx < B * d) {  // no early return: every thread takes part in the reductions below
    const int64_t b = idx / d, j = idx % d;
    const acc_t a1 = alphas[0], a3 = alphas[2], a4 = alphas[3];
    const acc_t a25 = acc_t(alphas[1]) + acc_t(alphas[4]);
    const scalar_t* yb = y + b * sB + j;
    acc_t acc = 0;  // gradient of m waiting for the position that holds the maximum
    for (int64_t t = T - 1; t >= 0; --t) {
      const acc_t av = yb[t * sT], bv = yb[t * sT + d], cv = yb[t * sT + 2 * d];
      const int64_t o = (b * T + t) * d + j;
      const acc_t g = grad_out[o], mv = m_saved[o];
      scalar_t* gy = grad_y + (b * T + t) * 3 * d + j;
      gy[0] = scalar_t(g * (mv + a3));
      gy[d] = scalar_t(g * (mv + a1));
      acc += g * (av + bv + cv + a25);
      acc_t dc = g * (mv + a4);
      if (is_argmax(cv, mv)) {
        dc += acc;
        acc = 0;
      }
      gy[2 * d] = scalar_t(dc);
      sb += g * bv;
      sm += g * mv;
      sa += g * av;
      sc += g * cv;
    }
    // Whatever is left in acc belongs to the carried-in state, which is not differentiated.
  }
  // Warp: a shuffle tree, lane 0 ends with the warp's sums.
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    sb += __shfl_down_sync(0xffffffffu, sb, off);
    sm += __shfl_down_sync(0xffffffffu, sm, off);
    sa += __shfl_down_sync(0xffffffffu, sa, off);
    sc += __shfl_down_sync(0xffffffffu, sc, off);
  }
  // Block: the warps' sums through shared memory, added by thread 0 in warp order.
  __shared__ acc_t warp_sums[kThreads / kWarp][4];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) {
    warp_sums[warp][0] = sb;
    warp_sums[warp][1] = sm;
    warp_sums[warp][2] = sa;
    warp_sums[warp][3] = sc;
  }
  __syncthreads();
  if (threadIdx.x < 4) {
    acc_t s = 0;
    for (int w = 0; w < kThreads / kWarp; ++w) s += warp_sums[w][threadIdx.x];
    partials[static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x] = s;
  }
}

// One block of kThreads: thread i adds the partials of blocks i, i + kThreads, ... in order, then a
// shared-memory tree adds the threads' sums. Writes dL/dalpha1..5 = [g*b, g*m, g*a, g*c, g*m]
// (alpha2 and alpha5 both multiply m). With no partials (B*d == 0) the gradients are zero.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    finish_alphas_kernel(const acc_t* __restrict__ partials, int64_t num_partials,
                         scalar_t* __restrict__ grad_alphas) {
  __shared__ acc_t sums[4][kThreads];
  acc_t s[4] = {0, 0, 0, 0};
  for (int64_t i = threadIdx.x; i < num_partials; i += kThreads) {
    for (int k = 0; k < 4; ++k) s[k] += partials[i * 4 + k];
  }
  for (int k = 0; k < 4; ++k) sums[k][threadIdx.x] = s[k];
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      for (int k = 0; k < 4; ++k) sums[k][threadIdx.x] += sums[k][threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x < 5) {
    const int k = threadIdx.x == 4 ? 1 : threadIdx.x;  // alpha5 takes the g*m sum, as alpha2
    grad_alphas[threadIdx.x] = scalar_t(sums[k][0]);
  }
}

int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

// A 1-D grid of `blocks` blocks; gridDim.x is limited to 2^31 - 1.
unsigned int grid_size(int64_t blocks) {
  TORCH_CHECK(blocks > 0 && blocks <= std::numeric_limits<int32_t>::max(),
              "cummax_gate: B*d too large for one grid (", blocks, " blocks)");
  return static_cast<unsigned int>(blocks);
}

}  // namespace

bool cuda_kernels_compiled() { return true; }

void cummax_gate_forward_cuda(const torch::Tensor& y, const torch::Tensor& alphas,
                              const torch::Tensor& state, torch::Tensor& out,
                              torch::Tensor& m_saved, torch::Tensor& last_m) {
  const int64_t B = y.size(0), T = y.size(1), d = y.size(2) / 3;
  if (B * d == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "cummax_gate_forward_cuda", [&] {
    forward_kernel<scalar_t><<<grid_size(blocks_for(B * d)), kThreads, 0, stream>>>(
        y.data_ptr<scalar_t>(), alphas.data_ptr<scalar_t>(),
        state.defined() ? state.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(),
        m_saved.defined() ? m_saved.data_ptr<scalar_t>() : nullptr, last_m.data_ptr<scalar_t>(),
        B, T, d, y.stride(0), y.stride(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void cummax_gate_backward_cuda(const torch::Tensor& grad_out, const torch::Tensor& y,
                               const torch::Tensor& alphas, const torch::Tensor& m_saved,
                               torch::Tensor& grad_y, torch::Tensor& grad_alphas) {
  const int64_t B = y.size(0), T = y.size(1), d = y.size(2) / 3;
  TORCH_CHECK(grad_alphas.is_contiguous() && grad_alphas.numel() == 5,
              "cummax_gate_backward_cuda: grad_alphas must be a contiguous (5,)");
  const int64_t blocks = blocks_for(B * d);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "cummax_gate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // (blocks, 4): each block's [g*b, g*m, g*a, g*c]; every entry is written, so empty is enough.
    auto partials =
        torch::empty({blocks, 4}, y.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    if (blocks > 0) {
      backward_kernel<scalar_t, acc_t><<<grid_size(blocks), kThreads, 0, stream>>>(
          grad_out.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), alphas.data_ptr<scalar_t>(),
          m_saved.data_ptr<scalar_t>(), grad_y.data_ptr<scalar_t>(), partials.data_ptr<acc_t>(), B,
          T, d, y.stride(0), y.stride(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    finish_alphas_kernel<scalar_t, acc_t><<<1, kThreads, 0, stream>>>(
        partials.data_ptr<acc_t>(), blocks, grad_alphas.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace samout::ops
