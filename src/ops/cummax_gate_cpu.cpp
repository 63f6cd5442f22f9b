// The fused cummax_gate kernels for the CPU: one pass over time per channel, forward and backward.
//
// Work is split into (batch row, block of kBlock contiguous channels) tasks run by at::parallel_for.
// Inside a task the time loop is outermost and the channel loop innermost, so each step reads three
// contiguous runs of y (a, b and c of the block) and the compiler vectorises the channel loop; the
// running maxima of the block live in a small local array.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "samout/ops/cummax_gate.h"

namespace samout::ops {

namespace {

constexpr int64_t kBlock = 64;  // channels per task: 64 floats = 4 cache lines per row

// torch.cummax's update rule: take the new value when it is >= the running max (ties go to the
// latest position) or when it is NaN (NaN propagates, and a later NaN is the latest maximum).
template <typename T>
inline T take_max(T running, T v) {
  return (v >= running || v != v) ? v : running;
}

// True when position t holds the running maximum m_t itself (argmax_t == t), given c_t and m_t.
// Derivation: m_t is either c_t or m_{t-1}; if c_t won, c_t == m_t bitwise (or both are NaN).
// If m_{t-1} won, then c_t < m_{t-1} = m_t, or m_t is NaN while c_t is not: c_t == m_t is false.
template <typename T>
inline bool is_argmax(T c, T m) {
  return c == m || c != c;
}

template <typename scalar_t>
void forward_kernel(const torch::Tensor& y, const torch::Tensor& alphas, const torch::Tensor& state,
                    torch::Tensor& out, torch::Tensor& m_saved, torch::Tensor& last_m) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = y.size(0), T = y.size(1), d = y.size(2) / 3;
  const int64_t sB = y.stride(0), sT = y.stride(1);
  const scalar_t* yp = y.data_ptr<scalar_t>();
  const scalar_t* sp = state.defined() ? state.data_ptr<scalar_t>() : nullptr;
  scalar_t* op = out.data_ptr<scalar_t>();
  scalar_t* mp = m_saved.defined() ? m_saved.data_ptr<scalar_t>() : nullptr;
  scalar_t* lp = last_m.data_ptr<scalar_t>();
  const auto al = alphas.accessor<scalar_t, 1>();
  const acc_t a1 = al[0], a3 = al[2], a4 = al[3], a25 = acc_t(al[1]) + acc_t(al[4]);
  const int64_t nblocks = (d + kBlock - 1) / kBlock;

  at::parallel_for(0, B * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::array<acc_t, kBlock> m;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblocks, j0 = (task % nblocks) * kBlock;
      const int64_t w = std::min(kBlock, d - j0);
      for (int64_t j = 0; j < w; ++j)
        m[j] = sp ? acc_t(sp[b * d + j0 + j]) : -std::numeric_limits<acc_t>::infinity();
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* ya = yp + b * sB + t * sT + j0;  // a; b at +d; c at +2d
        scalar_t* ot = op + (b * T + t) * d + j0;
        for (int64_t j = 0; j < w; ++j) {
          const acc_t av = ya[j], bv = ya[d + j], cv = ya[2 * d + j];
          const acc_t mv = take_max(m[j], cv);
          m[j] = mv;
          ot[j] = scalar_t((av + bv + cv + a25) * mv + a3 * av + a1 * bv + a4 * cv);
        }
        if (mp) {
          scalar_t* mt = mp + (b * T + t) * d + j0;
          for (int64_t j = 0; j < w; ++j) mt[j] = scalar_t(m[j]);
        }
      }
      for (int64_t j = 0; j < w; ++j) lp[b * d + j0 + j] = scalar_t(m[j]);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const torch::Tensor& grad_out, const torch::Tensor& y,
                     const torch::Tensor& alphas, const torch::Tensor& m_saved,
                     torch::Tensor& grad_y, torch::Tensor& grad_alphas) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = y.size(0), T = y.size(1), d = y.size(2) / 3;
  const int64_t sB = y.stride(0), sT = y.stride(1);
  const scalar_t* yp = y.data_ptr<scalar_t>();
  const scalar_t* gp = grad_out.data_ptr<scalar_t>();
  const scalar_t* mp = m_saved.data_ptr<scalar_t>();
  scalar_t* gyp = grad_y.data_ptr<scalar_t>();  // contiguous (B, T, 3d)
  const auto al = alphas.accessor<scalar_t, 1>();
  const acc_t a1 = al[0], a3 = al[2], a4 = al[3], a25 = acc_t(al[1]) + acc_t(al[4]);
  const int64_t nblocks = (d + kBlock - 1) / kBlock;
  // Per-task partial sums of the alpha gradients, reduced afterwards in task order so that the
  // result does not depend on the thread count: [task][g*b, g*m, g*a, g*c].
  std::vector<std::array<double, 4>> partial(B * nblocks);

  at::parallel_for(0, B * nblocks, 1, [&](int64_t begin, int64_t end) {
    // acc[j]: gradient of m gathered from positions > t whose maximum sits at or before t; it is
    // released into dc at the position that holds the maximum (is_argmax), then reset.
    std::array<acc_t, kBlock> acc;
    // Per-channel partial sums of the alpha gradients: one accumulator per lane keeps the channel
    // loop free of a loop-carried dependency (so it vectorises) and sums only T terms in acc_t
    // before the lanes are added in double.
    std::array<acc_t, kBlock> sb, sm, sa, sc;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblocks, j0 = (task % nblocks) * kBlock;
      const int64_t w = std::min(kBlock, d - j0);
      acc.fill(acc_t(0));
      sb.fill(acc_t(0));
      sm.fill(acc_t(0));
      sa.fill(acc_t(0));
      sc.fill(acc_t(0));
      for (int64_t t = T - 1; t >= 0; --t) {
        const scalar_t* ya = yp + b * sB + t * sT + j0;
        const int64_t row = (b * T + t) * d + j0;
        const scalar_t* gt = gp + row;
        const scalar_t* mt = mp + row;
        scalar_t* gya = gyp + (b * T + t) * 3 * d + j0;
        for (int64_t j = 0; j < w; ++j) {
          const acc_t av = ya[j], bv = ya[d + j], cv = ya[2 * d + j];
          const acc_t g = gt[j], mv = mt[j];
          gya[j] = scalar_t(g * (mv + a3));
          gya[d + j] = scalar_t(g * (mv + a1));
          acc_t dc = g * (mv + a4);
          const acc_t total = acc[j] + g * (av + bv + cv + a25);
          const bool here = is_argmax(cv, mv);
          dc += here ? total : acc_t(0);
          acc[j] = here ? acc_t(0) : total;
          gya[2 * d + j] = scalar_t(dc);
          sb[j] += g * bv;
          sm[j] += g * mv;
          sa[j] += g * av;
          sc[j] += g * cv;
        }
      }
      // Whatever is left in acc belongs to the carried-in state, which is not differentiated.
      std::array<double, 4> lanes{0, 0, 0, 0};
      for (int64_t j = 0; j < w; ++j) {
        lanes[0] += sb[j];
        lanes[1] += sm[j];
        lanes[2] += sa[j];
        lanes[3] += sc[j];
      }
      partial[task] = lanes;
    }
  });

  std::array<double, 4> tot{0, 0, 0, 0};
  for (const auto& p : partial)
    for (int k = 0; k < 4; ++k) tot[k] += p[k];
  // d/dalpha1 = sum g*b, d/dalpha2 = d/dalpha5 = sum g*m, d/dalpha3 = sum g*a, d/dalpha4 = sum g*c.
  auto ga = grad_alphas.accessor<scalar_t, 1>();
  ga[0] = scalar_t(tot[0]);
  ga[1] = scalar_t(tot[1]);
  ga[2] = scalar_t(tot[2]);
  ga[3] = scalar_t(tot[3]);
  ga[4] = scalar_t(tot[1]);
}

}  // namespace

void cummax_gate_forward_cpu(const torch::Tensor& y, const torch::Tensor& alphas,
                             const torch::Tensor& state, torch::Tensor& out,
                             torch::Tensor& m_saved, torch::Tensor& last_m) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "cummax_gate_forward_cpu", [&] {
    forward_kernel<scalar_t>(y, alphas, state, out, m_saved, last_m);
  });
}

void cummax_gate_backward_cpu(const torch::Tensor& grad_out, const torch::Tensor& y,
                              const torch::Tensor& alphas, const torch::Tensor& m_saved,
                              torch::Tensor& grad_y, torch::Tensor& grad_alphas) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "cummax_gate_backward_cpu", [&] {
    backward_kernel<scalar_t>(grad_out, y, alphas, m_saved, grad_y, grad_alphas);
  });
}

}  // namespace samout::ops
