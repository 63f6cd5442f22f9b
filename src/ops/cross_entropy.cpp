// cross_entropy_sum (cross_entropy.h): the autograd function. fp32 CPU logits take the fused kernel
// (cross_entropy_cpu.cpp); anything else computes log-softmax once and reuses its buffer for the
// gradient.
#include "samout/ops/cross_entropy.h"

namespace samout::ops {
namespace {

class CrossEntropySum : public torch::autograd::Function<CrossEntropySum> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& logits,
                               const torch::Tensor& targets, int64_t ignore_index) {
    if (cross_entropy_uses_fused(logits)) {
      torch::Tensor row_loss, grad;
      cross_entropy_forward_cpu(logits, targets, ignore_index, row_loss, ctx ? &grad : nullptr);
      if (ctx) ctx->save_for_backward({grad});
      return row_loss.sum();
    }
    const auto t = targets.to(torch::kLong);
    const auto valid = t.ne(ignore_index);
    const auto idx = t.masked_fill(valid.logical_not(), 0).unsqueeze(1);  // any column for ignored
    auto buf = at::_log_softmax(logits, /*dim=*/1, /*half_to_float=*/false);
    const auto picked = buf.gather(1, idx).squeeze(1);
    const auto loss = -picked.masked_fill(valid.logical_not(), 0).sum();
    if (ctx) {  // the gradient, in the same buffer: softmax - one_hot, zero on ignored rows
      buf.exp_();
      buf.scatter_add_(1, idx, -valid.to(buf.scalar_type()).unsqueeze(1));
      // A mask, not nonzero(): nonzero's output size would need a device-to-host sync.
      buf.masked_fill_(valid.logical_not().unsqueeze(1), 0);
      ctx->save_for_backward({buf});
    }
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

}  // namespace

torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& targets,
                                int64_t ignore_index) {
  TORCH_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
              "cross_entropy_sum: logits (N, V) and targets (N,), got ", logits.sizes(), " and ",
              targets.sizes());
  TORCH_CHECK(logits.is_floating_point() && !targets.is_floating_point(),
              "cross_entropy_sum: floating logits and integer targets");
  if (torch::GradMode::is_enabled() && logits.requires_grad())
    return CrossEntropySum::apply(logits, targets, ignore_index);
  return CrossEntropySum::forward(nullptr, logits, targets, ignore_index);
}

}  // namespace samout::ops
