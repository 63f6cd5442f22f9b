// cross_entropy_sum's autograd: the forward op keeps the gradient softmax - one_hot, which the
// backward scales in place.
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "samout/ops/cross_entropy.h"

namespace samout::ops {
namespace {

class CrossEntropySum : public torch::autograd::Function<CrossEntropySum> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& logits,
                               const torch::Tensor& targets, int64_t ignore_index) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad] = cross_entropy_sum_forward(logits, targets, ignore_index, true);
    ctx->save_for_backward({grad});
    return loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto grad = ctx->get_saved_variables()[0];
    // In place: the buffer is this node's own and backward runs once (the trainer never retains
    // the graph), so scaling it saves a fresh (N, V) allocation. A second backward through a
    // retained graph would find it already scaled: refuse it rather than return a wrong gradient.
    TORCH_CHECK(ctx->saved_data.count("used") == 0,
                "cross_entropy_sum: a second backward through the same graph is not supported");
    ctx->saved_data["used"] = true;
    grad.mul_(grads[0]);
    return {grad, torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor cross_entropy_sum_autograd(const torch::Tensor& logits, const torch::Tensor& targets,
                                         int64_t ignore_index) {
  if (torch::autograd::compute_requires_grad(logits))
    return CrossEntropySum::apply(logits, targets, ignore_index);
  at::AutoDispatchBelowADInplaceOrView guard;
  return std::get<0>(cross_entropy_sum_forward(logits, targets, ignore_index, false));
}

}  // namespace

TORCH_LIBRARY_IMPL(samout, Autograd, m) { m.impl("cross_entropy_sum", cross_entropy_sum_autograd); }

}  // namespace samout::ops
