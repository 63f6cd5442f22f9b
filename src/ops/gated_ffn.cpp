// gated_ffn (gated_ffn.h): the fused fp32 CPU path and the composite reference.
#include "samout/ops/gated_ffn.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

#include <algorithm>

#include "samout/ops/linear.h"

namespace samout::ops {
namespace {

class GatedFfnFunction : public torch::autograd::Function<GatedFfnFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& y,
                               const torch::Tensor& w1, const torch::Tensor& b1,
                               const torch::Tensor& wg, const torch::Tensor& bg,
                               const torch::Tensor& w2, const torch::Tensor& b2) {
    const int64_t f = w1.size(0);
    const auto y2 = y.reshape({-1, y.size(-1)}).contiguous();
    const auto wcat = torch::cat({w1, wg}, 0);  // (2f, d): 2 MB at the seed's size, per call
    const auto u = at::addmm(torch::cat({b1, bg}, 0), y2, wcat.t());  // (M, 2f) = [a | g]
    const int64_t M = u.size(0);
    auto h = torch::empty({M, f}, u.options());
    const float* up = u.data_ptr<float>();
    float* hp = h.data_ptr<float>();
    at::parallel_for(0, M, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* a = up + r * 2 * f;
        const float* g = a + f;
        float* hr = hp + r * f;
        for (int64_t j = 0; j < f; ++j) hr[j] = a[j] * std::max(g[j], 0.0f);
      }
    });
    auto out = at::addmm(b2, h, w2.t());
    ctx->save_for_backward({y2, wcat, u, h, w2});
    auto shape = y.sizes().vec();
    shape.back() = w2.size(0);
    ctx->saved_data["y_shape"] = y.sizes().vec();
    return out.view(shape);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &y2 = saved[0], &wcat = saved[1], &u = saved[2], &h = saved[3], &w2 = saved[4];
    const int64_t M = u.size(0), f = h.size(1);
    const auto dout = grads[0].reshape({M, w2.size(0)}).contiguous();

    auto dh = dout.mm(w2);  // (M, d_out) @ (d_out, f)
    auto dw2 = dout.t().mm(h);
    auto db2 = dout.sum(0);

    // d[a | g] in one pass: da = dh * relu(g), dg = dh * a * (g > 0).
    auto du = torch::empty_like(u);
    const float* up = u.data_ptr<float>();
    const float* dhp = dh.data_ptr<float>();
    float* dup = du.data_ptr<float>();
    at::parallel_for(0, M, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* a = up + r * 2 * f;
        const float* g = a + f;
        const float* d = dhp + r * f;
        float* da = dup + r * 2 * f;
        float* dg = da + f;
        for (int64_t j = 0; j < f; ++j) {
          const bool on = g[j] > 0.0f;
          da[j] = on ? d[j] * g[j] : 0.0f;
          dg[j] = on ? d[j] * a[j] : 0.0f;
        }
      }
    });
    torch::Tensor dy;
    if (ctx->needs_input_grad(0)) {
      dy = du.mm(wcat);  // (M, 2f) @ (2f, d): both projections' dL/dy, summed
      dy = dy.view(ctx->saved_data["y_shape"].toIntVector());
    }
    auto dwcat = du.t().mm(y2);
    auto dbcat = du.sum(0);
    return {dy,
            dwcat.narrow(0, 0, f),
            dbcat.narrow(0, 0, f),
            dwcat.narrow(0, f, f),
            dbcat.narrow(0, f, f),
            dw2,
            db2};
  }
};

}  // namespace

bool gated_ffn_uses_fused(const torch::Tensor& y, const torch::Tensor& w1,
                          const torch::Tensor& w2) {
  auto fp32_cpu = [](const torch::Tensor& t) {
    return t.is_cpu() && t.scalar_type() == torch::kFloat32 && t.layout() == torch::kStrided;
  };
  // Under CPU autocast the products would run in bf16: the composite keeps those semantics.
  return fp32_cpu(y) && fp32_cpu(w1) && fp32_cpu(w2) && w1.dim() == 2 && w2.dim() == 2 &&
         y.dim() >= 1 && y.size(-1) == w1.size(1) && w2.size(1) == w1.size(0) &&
         !at::autocast::is_autocast_enabled(at::kCPU);
}

torch::Tensor gated_ffn_composite(const torch::Tensor& y, const torch::Tensor& w1,
                                  const torch::Tensor& b1, const torch::Tensor& wg,
                                  const torch::Tensor& bg, const torch::Tensor& w2,
                                  const torch::Tensor& b2) {
  auto h = linear(y, w1, b1) * torch::relu(linear(y, wg, bg));
  return linear(h, w2, b2);
}

torch::Tensor gated_ffn(const torch::Tensor& y, const torch::Tensor& w1, const torch::Tensor& b1,
                        const torch::Tensor& wg, const torch::Tensor& bg, const torch::Tensor& w2,
                        const torch::Tensor& b2) {
  const bool track =
      torch::GradMode::is_enabled() &&
      (y.requires_grad() || w1.requires_grad() || wg.requires_grad() || w2.requires_grad() ||
       b1.requires_grad() || bg.requires_grad() || b2.requires_grad());
  // Inference keeps the composite: linear() sends few-row products to the GEMV there.
  if (!track || !gated_ffn_uses_fused(y, w1, w2))
    return gated_ffn_composite(y, w1, b1, wg, bg, w2, b2);
  TORCH_CHECK(wg.sizes() == w1.sizes() && b1.dim() == 1 && b1.size(0) == w1.size(0) &&
                  bg.sizes() == b1.sizes() && b2.dim() == 1 && b2.size(0) == w2.size(0),
              "gated_ffn: shapes W1 ", w1.sizes(), ", b1 ", b1.sizes(), ", Wg ", wg.sizes(),
              ", bg ", bg.sizes(), ", W2 ", w2.sizes(), ", b2 ", b2.sizes(), " do not fit");
  return GatedFfnFunction::apply(y, w1, b1, wg, bg, w2, b2);
}

}  // namespace samout::ops
