// cross_entropy_sum's device-generic forward from ATen ops: log-softmax once, its buffer turned in
// place into the gradient. The reference and the CUDA kernel of the forward op; the top-level op's
// kernel when autograd is out of the dispatch (inference mode, meta tensors).
#include <torch/library.h>

#include "samout/ops/cross_entropy.h"

namespace samout::ops {

std::tuple<torch::Tensor, torch::Tensor> cross_entropy_forward_composite(
    const torch::Tensor& logits, const torch::Tensor& targets, int64_t ignore_index,
    bool with_grad) {
  cross_entropy_check(logits, targets);
  const auto t = targets.to(torch::kLong);
  const auto ignored = t.eq(ignore_index);
  const auto idx = t.masked_fill(ignored, 0).unsqueeze(1);  // any column for ignored rows
  auto buf = at::_log_softmax(logits, /*dim=*/1, /*half_to_float=*/false);
  auto loss = -buf.gather(1, idx).squeeze(1).masked_fill(ignored, 0).sum();
  if (!with_grad) return {loss, at::empty({0}, logits.options())};
  // The gradient, in the same buffer: softmax - one_hot, zero on ignored rows.
  buf.exp_();
  buf.scatter_add_(1, idx, -ignored.logical_not().to(buf.scalar_type()).unsqueeze(1));
  // A mask, not nonzero(): nonzero's output size would need a device-to-host sync.
  buf.masked_fill_(ignored.unsqueeze(1), 0);
  return {loss, buf};
}

namespace {

torch::Tensor cross_entropy_sum_composite(const torch::Tensor& logits, const torch::Tensor& targets,
                                          int64_t ignore_index) {
  return std::get<0>(cross_entropy_sum_forward(logits, targets, ignore_index, false));
}

}  // namespace

TORCH_LIBRARY_IMPL(samout, CUDA, m) {
  m.impl("cross_entropy_sum_forward", cross_entropy_forward_composite);
}

TORCH_LIBRARY_IMPL(samout, CompositeExplicitAutograd, m) {
  m.impl("cross_entropy_sum", cross_entropy_sum_composite);
}

}  // namespace samout::ops
