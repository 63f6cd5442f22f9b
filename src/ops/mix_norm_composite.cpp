// mix_layer_norm's ATen composite (mix_norm.h), also its kernel where autograd is not in the
// dispatch (inference mode, meta tensors), where fp32 CPU tensors still take the fused forward.
#include <torch/library.h>

#include "samout/ops/mix_norm.h"

namespace samout::ops {

torch::Tensor mix_layer_norm_composite(const torch::Tensor& f, const torch::Tensor& x,
                                       const torch::Tensor& alpha, const torch::Tensor& gamma,
                                       const torch::Tensor& beta, double eps, bool add_residual) {
  auto mixed = alpha * f + (1 - alpha) * x;
  auto h = at::layer_norm_symint(mixed, {f.sym_size(-1)}, gamma, beta, eps);
  return add_residual ? h + x : h;
}

namespace {

torch::Tensor mix_layer_norm_no_autograd(const torch::Tensor& f, const torch::Tensor& x,
                                         const torch::Tensor& alpha, const torch::Tensor& gamma,
                                         const torch::Tensor& beta, double eps, bool add_residual) {
  if (mix_norm_uses_fused(f, x, alpha, gamma, beta))
    return std::get<0>(mix_layer_norm_forward(f, x, alpha, gamma, beta, eps, add_residual));
  return mix_layer_norm_composite(f, x, alpha, gamma, beta, eps, add_residual);
}

}  // namespace

TORCH_LIBRARY_IMPL(samout, CompositeExplicitAutograd, m) {
  m.impl("mix_layer_norm", &mix_layer_norm_no_autograd);
}

}  // namespace samout::ops
