// gated_ffn's autograd kernel (gated_ffn.h): the fused fp32 CPU ops with their own backward where
// a gradient is needed, else the composite, which ATen's autograd differentiates.
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "samout/ops/dispatch.h"
#include "samout/ops/gated_ffn.h"

namespace samout::ops {
namespace {
using torch::Tensor;

class GatedFfnFunction : public torch::autograd::Function<GatedFfnFunction> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& y, const Tensor& w1,
                        const Tensor& b1, const Tensor& wg, const Tensor& bg, const Tensor& w2,
                        const Tensor& b2) {
    static const auto op = find_op<std::tuple<Tensor, Tensor, Tensor>(
        const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
        const Tensor&)>("samout::gated_ffn_forward");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, u, h] = op.call(y, w1, b1, wg, bg, w2, b2);
    ctx->save_for_backward({y, w1, wg, w2, u, h});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
    static const auto op =
        find_op<Grads(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                      const Tensor&, const Tensor&, bool)>("samout::gated_ffn_backward");
    const auto s = ctx->get_saved_variables();
    auto [dy, dw1, db1, dwg, dbg, dw2, db2] =
        op.call(grads[0], s[0], s[1], s[2], s[3], s[4], s[5], ctx->needs_input_grad(0));
    return {dy, dw1, db1, dwg, dbg, dw2, db2};
  }
};

Tensor gated_ffn_autograd(const Tensor& y, const Tensor& w1, const Tensor& b1, const Tensor& wg,
                          const Tensor& bg, const Tensor& w2, const Tensor& b2) {
  const bool track = torch::autograd::compute_requires_grad(y, w1, b1, wg, bg, w2, b2);
  // Inference keeps the composite: linear() sends few-row products to the GEMV there.
  if (!track || !gated_ffn_uses_fused(y, w1, w2))
    return gated_ffn_composite(y, w1, b1, wg, bg, w2, b2);
  return GatedFfnFunction::apply(y, w1, b1, wg, bg, w2, b2);
}

}  // namespace

TORCH_LIBRARY_IMPL(samout, Autograd, m) { m.impl("gated_ffn", TORCH_FN(gated_ffn_autograd)); }

}  // namespace samout::ops
