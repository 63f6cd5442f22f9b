// mix_layer_norm (mix_norm.h): the fused fp32 CPU kernel, its autograd function, and the dispatch
// to the composite.
//
// Rows are independent, so the forward and the per-row part of the backward split rows across
// threads freely. The sums over rows (dgamma, dbeta, dalpha) are taken per block of kBlockRows rows
// and the blocks then added in order: a block's partial does not depend on which thread ran it, so
// the result is the same at any thread count. Sums along a row use kLanes separate accumulators,
// an order fixed by the code rather than by the vectoriser or the alignment of the row.
#include "samout/ops/mix_norm.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

#include <cmath>
#include <vector>

namespace samout::ops {
namespace {

// Accumulators per row sum: a multiple of every SIMD width, so each lane group becomes vector adds.
constexpr int64_t kLanes = 16;
// Rows per block of the parameter-gradient sums: small enough that 1568 rows make dozens of blocks
// to share between threads, large enough that the (blocks, d) partials stay small.
constexpr int64_t kBlockRows = 32;

float lane_total(const float (&acc)[kLanes]) {
  float s = 0.0f;
  for (int64_t k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}

// A tensor of shape (..., d) as (N, d) rows, row r at data + r * stride(0). Only the last dim must
// be unit-stride; rows may overlap (a broadcast gradient), since the kernels only read them.
torch::Tensor as_rows(const torch::Tensor& t, int64_t d) {
  auto r = t.reshape({-1, d});
  return r.stride(1) == 1 ? r : r.contiguous();
}

struct Rows {
  const float* p;
  int64_t stride;
  const float* row(int64_t r) const { return p + r * stride; }
};

Rows rows_of(const torch::Tensor& t2) { return {t2.data_ptr<float>(), t2.stride(0)}; }

// ---- forward ---------------------------------------------------------------------------------------

// out row = (z - mean) * rstd * gamma + beta (+ x), z = a * f + b * x. z is built in the output row
// itself, which then stays in L1 for the two moment passes and the final one.
template <bool kResidual>
void forward_row(const float* __restrict f, const float* __restrict x, float a, float b,
                 const float* __restrict gamma, const float* __restrict beta, float eps, int64_t d,
                 float* __restrict out, float* mean_out, float* rstd_out) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) {
      // Same operations, same rounding as the composite's alpha * f + (1 - alpha) * x.
      out[j + k] = a * f[j + k] + b * x[j + k];
      acc[k] += out[j + k];
    }
  for (int64_t k = 0; j < d; ++j, ++k) {
    out[j] = a * f[j] + b * x[j];
    acc[k] += out[j];
  }
  const float mu = lane_total(acc) / static_cast<float>(d);

  // Two passes: the variance from centred values, as stable as ATen's Welford moments.
  float acc2[kLanes] = {};
  j = 0;
  for (; j + kLanes <= d; j += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) {
      const float c = out[j + k] - mu;
      acc2[k] += c * c;
    }
  for (int64_t k = 0; j < d; ++j, ++k) {
    const float c = out[j] - mu;
    acc2[k] += c * c;
  }
  const float var = lane_total(acc2) / static_cast<float>(d);
  const float rs = 1.0f / std::sqrt(var + eps);

  for (j = 0; j < d; ++j) {
    const float y = (out[j] - mu) * rs * gamma[j] + beta[j];
    out[j] = kResidual ? y + x[j] : y;
  }
  if (mean_out) {
    *mean_out = mu;
    *rstd_out = rs;
  }
}

// out: (N, d) contiguous. mean, rstd: (N,) or undefined when nothing needs the backward.
void forward_cpu(const torch::Tensor& f2, const torch::Tensor& x2, float a, const float* gamma,
                 const float* beta, float eps, bool add_residual, torch::Tensor& out,
                 torch::Tensor& mean, torch::Tensor& rstd) {
  const int64_t N = f2.size(0), d = f2.size(1);
  const Rows f = rows_of(f2), x = rows_of(x2);
  float* o = out.data_ptr<float>();
  float* mu = mean.defined() ? mean.data_ptr<float>() : nullptr;
  float* rs = rstd.defined() ? rstd.data_ptr<float>() : nullptr;
  const float b = 1.0f - a;
  const int64_t grain = std::max<int64_t>(1, 16384 / d);
  at::parallel_for(0, N, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* mr = mu ? mu + r : nullptr;
      float* sr = rs ? rs + r : nullptr;
      if (add_residual)
        forward_row<true>(f.row(r), x.row(r), a, b, gamma, beta, eps, d, o + r * d, mr, sr);
      else
        forward_row<false>(f.row(r), x.row(r), a, b, gamma, beta, eps, d, o + r * d, mr, sr);
    }
  });
}

// ---- backward --------------------------------------------------------------------------------------

struct Grads {
  torch::Tensor df, dx, dalpha, dgamma, dbeta;
};

// __restrict: the outputs never overlap the inputs (read-only rows may overlap each other), and
// without it GCC needs more alias checks than it will version a loop for, and leaves it scalar.
// One row of the backward. With xhat = (z - mean) * rstd and g = dout * gamma:
//   dz = rstd * (g - mean(g) - xhat * mean(g * xhat)),  df = a * dz,  dx = b * dz (+ dout),
// and the row's share of dgamma (dout * xhat), dbeta (dout) and dalpha (dz * (f - x)).
// Returns the row's dalpha term.
template <bool kResidual>
float backward_row(const float* __restrict f, const float* __restrict x,
                   const float* __restrict dout, float a, float b, float mu, float rs,
                   const float* __restrict gamma, int64_t d, float* __restrict xhat,
                   float* __restrict df, float* __restrict dx, float* __restrict pgamma,
                   float* __restrict pbeta) {
  float sg[kLanes] = {}, sgx[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) {
      const float xh = (a * f[j + k] + b * x[j + k] - mu) * rs;
      const float g = dout[j + k] * gamma[j + k];
      xhat[j + k] = xh;
      sg[k] += g;
      sgx[k] += g * xh;
      pgamma[j + k] += dout[j + k] * xh;
      pbeta[j + k] += dout[j + k];
    }
  for (int64_t k = 0; j < d; ++j, ++k) {
    const float xh = (a * f[j] + b * x[j] - mu) * rs;
    const float g = dout[j] * gamma[j];
    xhat[j] = xh;
    sg[k] += g;
    sgx[k] += g * xh;
    pgamma[j] += dout[j] * xh;
    pbeta[j] += dout[j];
  }
  const float inv_d = 1.0f / static_cast<float>(d);
  const float mg = lane_total(sg) * inv_d, mgx = lane_total(sgx) * inv_d;

  float sa[kLanes] = {};
  j = 0;
  for (; j + kLanes <= d; j += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) {
      const float dz = rs * (dout[j + k] * gamma[j + k] - mg - xhat[j + k] * mgx);
      df[j + k] = a * dz;
      dx[j + k] = kResidual ? b * dz + dout[j + k] : b * dz;
      sa[k] += dz * (f[j + k] - x[j + k]);
    }
  for (int64_t k = 0; j < d; ++j, ++k) {
    const float dz = rs * (dout[j] * gamma[j] - mg - xhat[j] * mgx);
    df[j] = a * dz;
    dx[j] = kResidual ? b * dz + dout[j] : b * dz;
    sa[k] += dz * (f[j] - x[j]);
  }
  return lane_total(sa);
}

Grads backward_cpu(const torch::Tensor& f2, const torch::Tensor& x2, const torch::Tensor& dout2,
                   float a, const torch::Tensor& gamma, const torch::Tensor& mean,
                   const torch::Tensor& rstd, bool add_residual) {
  const int64_t N = f2.size(0), d = f2.size(1);
  const int64_t blocks = (N + kBlockRows - 1) / kBlockRows;
  const Rows f = rows_of(f2), x = rows_of(x2), dout = rows_of(dout2);
  const float* gm = gamma.data_ptr<float>();
  const float* mu = mean.data_ptr<float>();
  const float* rs = rstd.data_ptr<float>();
  const float b = 1.0f - a;

  Grads g;
  g.df = torch::empty({N, d}, f2.options());
  g.dx = torch::empty({N, d}, f2.options());
  float* df = g.df.data_ptr<float>();
  float* dx = g.dx.data_ptr<float>();
  // Per block: dgamma and dbeta partials (blocks, d) in float, dalpha in double.
  std::vector<float> pgamma(blocks * d, 0.0f), pbeta(blocks * d, 0.0f);
  std::vector<double> palpha(blocks, 0.0);

  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> xhat(d);  // this row's xhat, kept between the two passes
    for (int64_t blk = b0; blk < b1; ++blk) {
      float* pg = pgamma.data() + blk * d;
      float* pb = pbeta.data() + blk * d;
      double da = 0.0;
      const int64_t r1 = std::min(N, (blk + 1) * kBlockRows);
      for (int64_t r = blk * kBlockRows; r < r1; ++r) {
        da += add_residual
                  ? backward_row<true>(f.row(r), x.row(r), dout.row(r), a, b, mu[r], rs[r], gm, d,
                                       xhat.data(), df + r * d, dx + r * d, pg, pb)
                  : backward_row<false>(f.row(r), x.row(r), dout.row(r), a, b, mu[r], rs[r], gm, d,
                                        xhat.data(), df + r * d, dx + r * d, pg, pb);
      }
      palpha[blk] = da;
    }
  });

  // Blocks in order, in double: the same sums at any thread count.
  std::vector<double> sg(d, 0.0), sb(d, 0.0);
  double sa = 0.0;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const float* pg = pgamma.data() + blk * d;
    const float* pb = pbeta.data() + blk * d;
    for (int64_t j = 0; j < d; ++j) {
      sg[j] += pg[j];
      sb[j] += pb[j];
    }
    sa += palpha[blk];
  }
  g.dgamma = torch::empty({d}, f2.options());
  g.dbeta = torch::empty({d}, f2.options());
  float* dg = g.dgamma.data_ptr<float>();
  float* db = g.dbeta.data_ptr<float>();
  for (int64_t j = 0; j < d; ++j) {
    dg[j] = static_cast<float>(sg[j]);
    db[j] = static_cast<float>(sb[j]);
  }
  g.dalpha = torch::tensor(static_cast<float>(sa), f2.options());
  return g;
}

// ---- autograd --------------------------------------------------------------------------------------

// Saves f and x (already held by the graph) and two floats per row; z is recomputed in the backward
// rather than kept, which spares an (N, d) buffer and costs one multiply-add per element.
class MixLayerNorm : public torch::autograd::Function<MixLayerNorm> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& f,
                               const torch::Tensor& x, const torch::Tensor& alpha,
                               const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                               bool add_residual) {
    const int64_t d = f.size(-1);
    const auto f2 = as_rows(f, d), x2 = as_rows(x, d);
    const auto gc = gamma.contiguous(), bc = beta.contiguous();
    const float a = alpha.item<float>();
    const int64_t N = f2.size(0);
    auto out = torch::empty({N, d}, f2.options());
    torch::Tensor mean, rstd;
    if (ctx) {
      mean = torch::empty({N}, f2.options());
      rstd = torch::empty({N}, f2.options());
    }
    forward_cpu(f2, x2, a, gc.data_ptr<float>(), bc.data_ptr<float>(), static_cast<float>(eps),
                add_residual, out, mean, rstd);
    if (ctx) {
      ctx->save_for_backward({f2, x2, gc, mean, rstd});
      ctx->saved_data["alpha"] = static_cast<double>(a);
      ctx->saved_data["alpha_shape"] = alpha.sizes().vec();
      ctx->saved_data["add_residual"] = add_residual;
    }
    return out.view(f.sizes());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& f2 = saved[0];
    const int64_t d = f2.size(1);
    const auto dout2 = as_rows(grads[0], d);
    const auto a = static_cast<float>(ctx->saved_data["alpha"].toDouble());
    auto g = backward_cpu(f2, saved[1], dout2, a, saved[2], saved[3], saved[4],
                          ctx->saved_data["add_residual"].toBool());
    const auto shape = grads[0].sizes();
    auto keep = [&](int i, const torch::Tensor& t) {
      return ctx->needs_input_grad(i) ? t : torch::Tensor();
    };
    const auto alpha_shape = ctx->saved_data["alpha_shape"].toIntVector();
    return {keep(0, g.df.view(shape)),
            keep(1, g.dx.view(shape)),
            keep(2, g.dalpha.reshape(alpha_shape)),
            keep(3, g.dgamma),
            keep(4, g.dbeta),
            torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

bool mix_norm_uses_fused(const torch::Tensor& f, const torch::Tensor& x, const torch::Tensor& alpha,
                         const torch::Tensor& gamma, const torch::Tensor& beta) {
  auto ok = [](const torch::Tensor& t) {
    return t.defined() && t.is_cpu() && t.scalar_type() == torch::kFloat32 &&
           t.layout() == torch::kStrided;
  };
  if (!(ok(f) && ok(x) && ok(alpha) && ok(gamma) && ok(beta))) return false;
  // Under CPU autocast the composite's ops follow autocast's policy; keep its semantics.
  return f.dim() >= 1 && f.sizes() == x.sizes() && f.numel() > 0 && alpha.numel() == 1 &&
         gamma.dim() == 1 && beta.dim() == 1 && gamma.size(0) == f.size(-1) &&
         beta.size(0) == f.size(-1) && !at::autocast::is_autocast_enabled(at::kCPU);
}

torch::Tensor mix_layer_norm_composite(const torch::Tensor& f, const torch::Tensor& x,
                                       const torch::Tensor& alpha, const torch::Tensor& gamma,
                                       const torch::Tensor& beta, double eps, bool add_residual) {
  auto mixed = alpha * f + (1 - alpha) * x;
  auto h = torch::layer_norm(mixed, {f.size(-1)}, gamma, beta, eps);
  return add_residual ? h + x : h;
}

torch::Tensor mix_layer_norm(const torch::Tensor& f, const torch::Tensor& x,
                             const torch::Tensor& alpha, const torch::Tensor& gamma,
                             const torch::Tensor& beta, double eps, bool add_residual) {
  TORCH_CHECK(f.dim() >= 1 && alpha.numel() == 1,
              "mix_layer_norm: f (..., d) and a one-element "
              "alpha, got ",
              f.sizes(), " and ", alpha.sizes());
  TORCH_CHECK(gamma.defined() && beta.defined() && gamma.dim() == 1 && beta.dim() == 1 &&
                  gamma.size(0) == f.size(-1) && beta.size(0) == f.size(-1),
              "mix_layer_norm: gamma and beta must be (", f.size(-1), ",)");
  if (!mix_norm_uses_fused(f, x, alpha, gamma, beta))
    return mix_layer_norm_composite(f, x, alpha, gamma, beta, eps, add_residual);
  const bool track = torch::GradMode::is_enabled() &&
                     (f.requires_grad() || x.requires_grad() || alpha.requires_grad() ||
                      gamma.requires_grad() || beta.requires_grad());
  if (track) return MixLayerNorm::apply(f, x, alpha, gamma, beta, eps, add_residual);
  return MixLayerNorm::forward(nullptr, f, x, alpha, gamma, beta, eps, add_residual);
}

}  // namespace samout::ops
