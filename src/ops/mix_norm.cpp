// mix_layer_norm (mix_norm.h): the ops' schemas, their Meta kernels (shapes only, for fake tensors
// and torch.compile, so SymInt sizes throughout), and the C++ entries through the dispatcher.
#include "samout/ops/mix_norm.h"

#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "samout/ops/dispatch.h"

namespace samout::ops {
namespace {

using torch::Tensor;

std::tuple<Tensor, Tensor, Tensor> forward_meta(const Tensor& f, const Tensor&, const Tensor&,
                                                const Tensor&, const Tensor&, double, bool) {
  const auto rows = f.sym_sizes().slice(0, f.dim() - 1);
  return {at::empty_symint(f.sym_sizes(), f.options()), at::empty_symint(rows, f.options()),
          at::empty_symint(rows, f.options())};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward_meta(const Tensor&, const Tensor& f,
                                                                 const Tensor&, const Tensor& alpha,
                                                                 const Tensor& gamma, const Tensor&,
                                                                 const Tensor&, bool) {
  return {at::empty_symint(f.sym_sizes(), f.options()),
          at::empty_symint(f.sym_sizes(), f.options()),
          at::empty_symint(alpha.sym_sizes(), f.options()),
          at::empty_symint(gamma.sym_sizes(), f.options()),
          at::empty_symint(gamma.sym_sizes(), f.options())};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(samout, m) {
  m.def(
      "mix_layer_norm(Tensor f, Tensor x, Tensor alpha, Tensor gamma, Tensor beta, float eps, "
      "bool add_residual) -> Tensor");
  m.def(
      "mix_layer_norm_forward(Tensor f, Tensor x, Tensor alpha, Tensor gamma, Tensor beta, "
      "float eps, bool add_residual) -> (Tensor out, Tensor mean, Tensor rstd)");
  m.def(
      "mix_layer_norm_backward(Tensor grad_out, Tensor f, Tensor x, Tensor alpha, Tensor gamma, "
      "Tensor mean, Tensor rstd, bool add_residual) -> (Tensor grad_f, Tensor grad_x, "
      "Tensor grad_alpha, Tensor grad_gamma, Tensor grad_beta)");
}

TORCH_LIBRARY_IMPL(samout, Meta, m) {
  m.impl("mix_layer_norm_forward", &forward_meta);
  m.impl("mix_layer_norm_backward", &backward_meta);
}

// Sizes as SymInts: the Autograd kernel asks this under torch.compile's dynamic shapes too.
bool mix_norm_uses_fused(const Tensor& f, const Tensor& x, const Tensor& alpha, const Tensor& gamma,
                         const Tensor& beta) {
  auto ok = [](const Tensor& t) {
    return t.defined() && t.is_cpu() && t.scalar_type() == torch::kFloat32 &&
           t.layout() == torch::kStrided;
  };
  if (!(ok(f) && ok(x) && ok(alpha) && ok(gamma) && ok(beta))) return false;
  // Under CPU autocast the composite's ops follow autocast's policy; keep its semantics.
  return f.dim() >= 1 && f.sym_sizes() == x.sym_sizes() && f.sym_numel() > 0 &&
         alpha.sym_numel() == 1 && gamma.dim() == 1 && beta.dim() == 1 &&
         gamma.sym_size(0) == f.sym_size(-1) && beta.sym_size(0) == f.sym_size(-1) &&
         !at::autocast::is_autocast_enabled(at::kCPU);
}

Tensor mix_layer_norm(const Tensor& f, const Tensor& x, const Tensor& alpha, const Tensor& gamma,
                      const Tensor& beta, double eps, bool add_residual) {
  TORCH_CHECK(f.dim() >= 1 && alpha.numel() == 1,
              "mix_layer_norm: f (..., d) and a one-element alpha, got ", f.sizes(), " and ",
              alpha.sizes());
  TORCH_CHECK(gamma.defined() && beta.defined() && gamma.dim() == 1 && beta.dim() == 1 &&
                  gamma.size(0) == f.size(-1) && beta.size(0) == f.size(-1),
              "mix_layer_norm: gamma and beta must be (", f.size(-1), ",)");
  static const auto op = find_op<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                        const Tensor&, double, bool)>("samout::mix_layer_norm");
  return op.call(f, x, alpha, gamma, beta, eps, add_residual);
}

std::tuple<Tensor, Tensor, Tensor> mix_layer_norm_forward(const Tensor& f, const Tensor& x,
                                                          const Tensor& alpha, const Tensor& gamma,
                                                          const Tensor& beta, double eps,
                                                          bool add_residual) {
  static const auto op = find_op<std::tuple<Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double, bool)>(
      "samout::mix_layer_norm_forward");
  return op.call(f, x, alpha, gamma, beta, eps, add_residual);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> mix_layer_norm_backward(
    const Tensor& grad_out, const Tensor& f, const Tensor& x, const Tensor& alpha,
    const Tensor& gamma, const Tensor& mean, const Tensor& rstd, bool add_residual) {
  static const auto op = find_op<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
      const Tensor&, bool)>("samout::mix_layer_norm_backward");
  return op.call(grad_out, f, x, alpha, gamma, mean, rstd, add_residual);
}

}  // namespace samout::ops
