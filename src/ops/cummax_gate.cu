// The fused cummax_gate kernels for CUDA: one thread per (batch row, channel), one pass over time.
//
// Adjacent threads own adjacent channels, so every time step is a coalesced read of a, b and c.
// This is the straightforward first version behind the dispatch point; the GPU-speed issue replaces
// it with a chunked two-pass scan for small B*d and long T. The reference is the composite
// (cummax_gate_composite), and tests/ops compare against it wherever a GPU exists.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "samout/ops/cummax_gate.h"

namespace samout::ops {

namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ T take_max(T running, T v) {
  return (v >= running || v != v) ? v : running;
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

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ y,
                                const scalar_t* __restrict__ alphas, const scalar_t* __restrict__ m_saved,
                                scalar_t* __restrict__ grad_y, acc_t* __restrict__ alpha_sums,
                                int64_t B, int64_t T, int64_t d, int64_t sB, int64_t sT) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  acc_t sb = 0, sm = 0, sa = 0, sc = 0;
  if (idx < B * d) {
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
      if (cv == mv || cv != cv) {
        dc += acc;
        acc = 0;
      }
      gy[2 * d] = scalar_t(dc);
      sb += g * bv;
      sm += g * mv;
      sa += g * av;
      sc += g * cv;
    }
  }
  // Reduce the four alpha sums over the warp, then one atomic per warp.
  for (int off = 16; off > 0; off >>= 1) {
    sb += __shfl_down_sync(0xffffffff, sb, off);
    sm += __shfl_down_sync(0xffffffff, sm, off);
    sa += __shfl_down_sync(0xffffffff, sa, off);
    sc += __shfl_down_sync(0xffffffff, sc, off);
  }
  if ((threadIdx.x & 31) == 0) {
    atomicAdd(alpha_sums + 0, sb);
    atomicAdd(alpha_sums + 1, sm);
    atomicAdd(alpha_sums + 2, sa);
    atomicAdd(alpha_sums + 3, sc);
  }
}

int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

}  // namespace

bool cuda_kernels_compiled() { return true; }

void cummax_gate_forward_cuda(const torch::Tensor& y, const torch::Tensor& alphas,
                              const torch::Tensor& state, torch::Tensor& out,
                              torch::Tensor& m_saved, torch::Tensor& last_m) {
  const int64_t B = y.size(0), T = y.size(1), d = y.size(2) / 3;
  if (B * d == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "cummax_gate_forward_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(B * d), kThreads, 0, stream>>>(
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
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "cummax_gate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto sums = torch::zeros({4}, y.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    if (B * d > 0) {
      backward_kernel<scalar_t, acc_t><<<blocks_for(B * d), kThreads, 0, stream>>>(
          grad_out.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), alphas.data_ptr<scalar_t>(),
          m_saved.data_ptr<scalar_t>(), grad_y.data_ptr<scalar_t>(), sums.data_ptr<acc_t>(), B, T, d,
          y.stride(0), y.stride(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // [g*b, g*m, g*a, g*c] -> d/dalpha1..5 (alpha2 and alpha5 both multiply m).
    grad_alphas.copy_(sums.index_select(0, torch::tensor({0, 1, 2, 3, 1}, sums.options().dtype(torch::kLong))));
  });
}

}  // namespace samout::ops
