// linear (linear.h): the autograd function around gemm_cpu, and the dispatch to at::linear.
#include "samout/ops/linear.h"

#include <ATen/autocast_mode.h>

#include "samout/ops/gemm.h"
#include "samout/ops/gemv.h"

namespace samout::ops {
namespace {

std::vector<int64_t> out_shape(const torch::Tensor& x, int64_t n) {
  auto shape = x.sizes().vec();
  shape.back() = n;
  return shape;
}

class LinearFunction : public torch::autograd::Function<LinearFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& w, const torch::Tensor& b) {
    const auto x2 = x.reshape({-1, x.size(-1)}).contiguous();
    ctx->save_for_backward({x2, w});
    ctx->saved_data["has_bias"] = b.numel() > 0;
    ctx->saved_data["x_shape"] = x.sizes().vec();
    return linear_2d_cpu(x2, w, b.numel() > 0 ? b : torch::Tensor()).view(out_shape(x, w.size(0)));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x2 = saved[0];
    const auto& w = saved[1];
    const auto dy = grads[0].reshape({-1, w.size(0)}).contiguous();  // (M, N)
    torch::Tensor dx, dw, db;
    if (ctx->needs_input_grad(0)) {
      dx = torch::empty_like(x2);
      gemm_cpu(dy, w, dx, 0.0f);  // (M, N) @ (N, K)
      dx = dx.view(ctx->saved_data["x_shape"].toIntVector());
    }
    if (ctx->needs_input_grad(1)) {
      dw = torch::empty_like(w);
      gemm_cpu(dy.t(), x2, dw, 0.0f);  // (N, M) @ (M, K)
    }
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) db = dy.sum(0);
    return {dx, dw, db};
  }
};

}  // namespace

torch::Tensor linear_2d_cpu(const torch::Tensor& x2, const torch::Tensor& w,
                            const torch::Tensor& b) {
  auto y = torch::empty({x2.size(0), w.size(0)}, x2.options());
  if (b.defined()) {
    y.copy_(b.expand_as(y));
    gemm_cpu(x2, w.t(), y, 1.0f);
  } else {
    gemm_cpu(x2, w.t(), y, 0.0f);
  }
  return y;
}

bool linear_uses_gemm_cpu(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  auto ok = [](const torch::Tensor& t) {
    return t.is_cpu() && t.scalar_type() == torch::kFloat32 && t.layout() == torch::kStrided;
  };
  // Under CPU autocast at::linear would compute in bf16; keep its semantics by handing it over.
  return ok(x) && ok(w) && (!b.defined() || ok(b)) && w.dim() == 2 && x.dim() >= 1 &&
         x.size(-1) == w.size(1) && (!b.defined() || (b.dim() == 1 && b.size(0) == w.size(0))) &&
         !at::autocast::is_autocast_enabled(at::kCPU);
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  if (!linear_uses_gemm_cpu(x, w, b)) return torch::nn::functional::linear(x, w, b);
  const bool track = torch::GradMode::is_enabled() &&
                     (x.requires_grad() || w.requires_grad() || (b.defined() && b.requires_grad()));
  if (!track) {
    // A few rows (decoding): packing W for a GEMM would cost more than the product; the GEMV
    // streams W once instead (gemv.h).
    const auto opt_b = b.defined() ? c10::optional<torch::Tensor>(b) : c10::nullopt;
    if (linear_rows_fast(x, w, opt_b)) return linear_rows(x, w, opt_b);
    const auto x2 = x.reshape({-1, x.size(-1)}).contiguous();
    return linear_2d_cpu(x2, w, b).view(out_shape(x, w.size(0)));
  }
  // Function::apply cannot take an undefined tensor; "no bias" travels as an empty one.
  return LinearFunction::apply(x, w, b.defined() ? b : torch::empty({0}, w.options()));
}

}  // namespace samout::ops
