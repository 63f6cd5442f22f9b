// mix_layer_norm (mix_norm.h): the Autograd kernel of samout::mix_layer_norm. For fp32 CPU tensors
// an autograd function around the fused forward and backward ops; anything else is the composite,
// which ATen's autograd differentiates (on CUDA, through ATen's CUDA LayerNorm).
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "samout/ops/mix_norm.h"

namespace samout::ops {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Saves f and x (already held by the graph) and two floats per row.
class MixLayerNorm : public torch::autograd::Function<MixLayerNorm> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& f, const Tensor& x, const Tensor& alpha,
                        const Tensor& gamma, const Tensor& beta, double eps, bool add_residual) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mean, rstd] = mix_layer_norm_forward(f, x, alpha, gamma, beta, eps, add_residual);
    ctx->save_for_backward({f, x, alpha, gamma, mean, rstd});
    ctx->saved_data["add_residual"] = add_residual;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    auto [df, dx, dalpha, dgamma, dbeta] = mix_layer_norm_backward(
        grads[0], s[0], s[1], s[2], s[3], s[4], s[5], ctx->saved_data["add_residual"].toBool());
    auto keep = [&](int i, const Tensor& t) { return ctx->needs_input_grad(i) ? t : Tensor(); };
    return {keep(0, df),    keep(1, dx), keep(2, dalpha), keep(3, dgamma),
            keep(4, dbeta), Tensor(),    Tensor()};
  }
};

Tensor mix_layer_norm_autograd(const Tensor& f, const Tensor& x, const Tensor& alpha,
                               const Tensor& gamma, const Tensor& beta, double eps,
                               bool add_residual) {
  if (!mix_norm_uses_fused(f, x, alpha, gamma, beta))
    return mix_layer_norm_composite(f, x, alpha, gamma, beta, eps, add_residual);
  const bool track = torch::autograd::compute_requires_grad(f, x, alpha, gamma, beta);
  if (track) return MixLayerNorm::apply(f, x, alpha, gamma, beta, eps, add_residual);
  at::AutoDispatchBelowADInplaceOrView guard;
  return std::get<0>(mix_layer_norm_forward(f, x, alpha, gamma, beta, eps, add_residual));
}

}  // namespace

TORCH_LIBRARY_IMPL(samout, Autograd, m) { m.impl("mix_layer_norm", &mix_layer_norm_autograd); }

}  // namespace samout::ops
