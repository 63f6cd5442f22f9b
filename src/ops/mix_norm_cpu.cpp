// mix_layer_norm's fused fp32 CPU kernels (mix_norm.h): samout::mix_layer_norm_forward / _backward.
// Rows split across threads freely; the sums over rows (dgamma, dbeta, dalpha) are taken per block
// of kBlockRows rows and the blocks added in order, so results are the same at any thread count.
// Sums along a row use kLanes accumulators: an order fixed by the code, not the vectoriser or the
// row's alignment.
#include "samout/ops/mix_norm.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace samout::ops {
namespace {

using torch::Tensor;

// Accumulators per row sum: a multiple of every SIMD width, so each lane group becomes vector adds.
constexpr int64_t kLanes = 16;
// Rows per block of the parameter-gradient sums: small enough that 1568 rows make dozens of blocks
// to share between threads, large enough that the (blocks, d) partials stay small.
constexpr int64_t kBlockRows = 32;

// body(j, k) for every j < d, k = the lane of j: whole kLanes groups (vector adds), then the tail.
template <typename F>
inline void for_lanes(int64_t d, F&& body) {
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) body(j + k, k);
  for (int64_t k = 0; j < d; ++j, ++k) body(j, k);
}

float lane_total(const float (&acc)[kLanes]) {
  float s = 0.0f;
  for (int64_t k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}

// A tensor of shape (..., d) as (N, d) rows, row r at data + r * stride(0). Only the last dim must
// be unit-stride; rows may overlap (a broadcast gradient), since the kernels only read them.
Tensor as_rows(const Tensor& t, int64_t d) {
  auto r = t.reshape({-1, d});
  return r.stride(1) == 1 ? r : r.contiguous();
}

struct Rows {
  const float* p;
  int64_t stride;
  const float* row(int64_t r) const { return p + r * stride; }
};

Rows rows_of(const Tensor& t2) { return {t2.data_ptr<float>(), t2.stride(0)}; }

// ---- forward ---------------------------------------------------------------------------------------

// out row = (z - mean) * rstd * gamma + beta (+ x), z = a * f + b * x. z is built in the output row
// itself, which then stays in L1 for the two moment passes and the final one.
template <bool kResidual>
void forward_row(const float* __restrict f, const float* __restrict x, float a, float b,
                 const float* __restrict gamma, const float* __restrict beta, float eps, int64_t d,
                 float* __restrict out, float* mean_out, float* rstd_out) {
  float acc[kLanes] = {};
  for_lanes(d, [&](int64_t j, int64_t k) {
    out[j] = a * f[j] + b * x[j];  // the rounding of the composite's alpha * f + (1 - alpha) * x
    acc[k] += out[j];
  });
  const float mu = lane_total(acc) / static_cast<float>(d);

  // Two passes: the variance from centred values, as stable as ATen's Welford moments.
  float acc2[kLanes] = {};
  for_lanes(d, [&](int64_t j, int64_t k) { acc2[k] += (out[j] - mu) * (out[j] - mu); });
  const float var = lane_total(acc2) / static_cast<float>(d);
  const float rs = 1.0f / std::sqrt(var + eps);

  for (int64_t j = 0; j < d; ++j) {
    const float y = (out[j] - mu) * rs * gamma[j] + beta[j];
    out[j] = kResidual ? y + x[j] : y;
  }
  *mean_out = mu;
  *rstd_out = rs;
}

// out: f's shape, contiguous, as (N, d) rows; mean, rstd: f.shape[:-1], one float per row.
std::tuple<Tensor, Tensor, Tensor> forward_cpu(const Tensor& f, const Tensor& x,
                                               const Tensor& alpha, const Tensor& gamma,
                                               const Tensor& beta, double eps, bool add_residual) {
  const int64_t d = f.size(-1);
  TORCH_CHECK(
      x.sizes() == f.sizes() && alpha.numel() == 1 && gamma.numel() == d && beta.numel() == d,
      "mix_layer_norm_forward: f, x (..., d), one-element alpha, gamma and beta (d,)");
  const auto f2 = as_rows(f, d), x2 = as_rows(x, d);
  const auto gc = gamma.contiguous(), bc = beta.contiguous();
  auto out = at::empty(f.sizes(), f.options());
  auto mean = at::empty(f.sizes().slice(0, f.dim() - 1), f.options());
  auto rstd = at::empty(f.sizes().slice(0, f.dim() - 1), f.options());
  const int64_t N = f2.size(0);
  const Rows fr = rows_of(f2), xr = rows_of(x2);
  const float* g = gc.data_ptr<float>();
  const float* bt = bc.data_ptr<float>();
  float* o = out.data_ptr<float>();
  float* mu = mean.data_ptr<float>();
  float* rs = rstd.data_ptr<float>();
  const float a = alpha.item<float>(), b = 1.0f - a, e = static_cast<float>(eps);
  const int64_t grain = std::max<int64_t>(1, 16384 / d);
  at::parallel_for(0, N, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (add_residual)
        forward_row<true>(fr.row(r), xr.row(r), a, b, g, bt, e, d, o + r * d, mu + r, rs + r);
      else
        forward_row<false>(fr.row(r), xr.row(r), a, b, g, bt, e, d, o + r * d, mu + r, rs + r);
    }
  });
  return {out, mean, rstd};
}

// ---- backward --------------------------------------------------------------------------------------

// One row of the backward. With xhat = (z - mean) * rstd and g = dout * gamma:
//   dz = rstd * (g - mean(g) - xhat * mean(g * xhat)),  df = a * dz,  dx = b * dz (+ dout);
// adds the row's dgamma (dout * xhat) and dbeta (dout) and returns its dalpha (dz * (f - x)).
// __restrict (outputs never overlap inputs): without it GCC needs too many alias checks to
// version the loop, and leaves it scalar.
template <bool kResidual>
float backward_row(const float* __restrict f, const float* __restrict x,
                   const float* __restrict dout, float a, float b, float mu, float rs,
                   const float* __restrict gamma, int64_t d, float* __restrict xhat,
                   float* __restrict df, float* __restrict dx, float* __restrict pgamma,
                   float* __restrict pbeta) {
  float sg[kLanes] = {}, sgx[kLanes] = {};
  for_lanes(d, [&](int64_t j, int64_t k) {
    const float xh = (a * f[j] + b * x[j] - mu) * rs;
    const float g = dout[j] * gamma[j];
    xhat[j] = xh;
    sg[k] += g;
    sgx[k] += g * xh;
    pgamma[j] += dout[j] * xh;
    pbeta[j] += dout[j];
  });
  const float inv_d = 1.0f / static_cast<float>(d);
  const float mg = lane_total(sg) * inv_d, mgx = lane_total(sgx) * inv_d;

  float sa[kLanes] = {};
  for_lanes(d, [&](int64_t j, int64_t k) {
    const float dz = rs * (dout[j] * gamma[j] - mg - xhat[j] * mgx);
    df[j] = a * dz;
    dx[j] = kResidual ? b * dz + dout[j] : b * dz;
    sa[k] += dz * (f[j] - x[j]);
  });
  return lane_total(sa);
}

// z is recomputed from f and x: one multiply-add per element spares saving an (N, d) buffer.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward_cpu(
    const Tensor& grad_out, const Tensor& f, const Tensor& x, const Tensor& alpha,
    const Tensor& gamma, const Tensor& mean, const Tensor& rstd, bool add_residual) {
  const int64_t d = f.size(-1);
  TORCH_CHECK(x.sizes() == f.sizes() && grad_out.sizes() == f.sizes() && alpha.numel() == 1 &&
                  gamma.numel() == d && mean.numel() * d == f.numel() &&
                  rstd.numel() == mean.numel(),
              "mix_layer_norm_backward: shapes do not match the forward's");
  const auto f2 = as_rows(f, d), x2 = as_rows(x, d), dout2 = as_rows(grad_out, d);
  const auto gc = gamma.contiguous(), mc = mean.contiguous(), rc = rstd.contiguous();
  const int64_t N = f2.size(0);
  const int64_t blocks = (N + kBlockRows - 1) / kBlockRows;
  const Rows fr = rows_of(f2), xr = rows_of(x2), dout = rows_of(dout2);
  const float* gm = gc.data_ptr<float>();
  const float* mu = mc.data_ptr<float>();
  const float* rs = rc.data_ptr<float>();
  const float a = alpha.item<float>(), b = 1.0f - a;

  auto gdf = at::empty(f.sizes(), f.options()), gdx = at::empty(f.sizes(), f.options());
  float* df = gdf.data_ptr<float>();
  float* dx = gdx.data_ptr<float>();
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
                  ? backward_row<true>(fr.row(r), xr.row(r), dout.row(r), a, b, mu[r], rs[r], gm, d,
                                       xhat.data(), df + r * d, dx + r * d, pg, pb)
                  : backward_row<false>(fr.row(r), xr.row(r), dout.row(r), a, b, mu[r], rs[r], gm,
                                        d, xhat.data(), df + r * d, dx + r * d, pg, pb);
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
  auto gdgamma = at::empty(gamma.sizes(), f.options()),
       gdbeta = at::empty(gamma.sizes(), f.options());
  float* dg = gdgamma.data_ptr<float>();
  float* db = gdbeta.data_ptr<float>();
  for (int64_t j = 0; j < d; ++j) {
    dg[j] = static_cast<float>(sg[j]);
    db[j] = static_cast<float>(sb[j]);
  }
  auto gdalpha = at::empty(alpha.sizes(), f.options());
  *gdalpha.data_ptr<float>() = static_cast<float>(sa);
  return {gdf, gdx, gdalpha, gdgamma, gdbeta};
}

}  // namespace

TORCH_LIBRARY_IMPL(samout, CPU, m) {
  m.impl("mix_layer_norm_forward", &forward_cpu);
  m.impl("mix_layer_norm_backward", &backward_cpu);
}

}  // namespace samout::ops
