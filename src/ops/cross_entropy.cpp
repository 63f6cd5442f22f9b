// cross_entropy_sum (cross_entropy.h): the ops' schemas, the forward op's Meta kernel, the argument
// checks and the C++ entries.
#include "samout/ops/cross_entropy.h"

#include <torch/library.h>

#include "samout/ops/dispatch.h"

namespace samout::ops {
namespace {

std::tuple<torch::Tensor, torch::Tensor> forward_meta(const torch::Tensor& logits,
                                                      const torch::Tensor& targets, int64_t,
                                                      bool with_grad) {
  cross_entropy_check(logits, targets);
  const auto opts = logits.options();
  return {at::empty({}, opts),
          with_grad ? at::empty_symint(logits.sym_sizes(), opts) : at::empty({0}, opts)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(samout, m) {
  m.def("cross_entropy_sum(Tensor logits, Tensor targets, int ignore_index=-100) -> Tensor");
  m.def(
      "cross_entropy_sum_forward(Tensor logits, Tensor targets, int ignore_index, bool with_grad)"
      " -> (Tensor loss, Tensor grad)");
}

TORCH_LIBRARY_IMPL(samout, Meta, m) { m.impl("cross_entropy_sum_forward", forward_meta); }

void cross_entropy_check(const torch::Tensor& logits, const torch::Tensor& targets) {
  TORCH_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.sym_size(0) == logits.sym_size(0),
              "cross_entropy_sum: logits (N, V) and targets (N,), got ", logits.sym_sizes(),
              " and ", targets.sym_sizes());
  TORCH_CHECK(logits.is_floating_point() && !targets.is_floating_point(),
              "cross_entropy_sum: floating logits and integer targets");
}

bool cross_entropy_uses_fused(const torch::Tensor& logits) {
  return logits.is_cpu() && logits.scalar_type() == torch::kFloat32 && logits.dim() == 2 &&
         logits.is_contiguous() && logits.size(1) > 0;
}

torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& targets,
                                int64_t ignore_index) {
  static const auto op =
      find_op<torch::Tensor(const torch::Tensor&, const torch::Tensor&, int64_t)>(
          "samout::cross_entropy_sum");
  return op.call(logits, targets, ignore_index);
}

std::tuple<torch::Tensor, torch::Tensor> cross_entropy_sum_forward(const torch::Tensor& logits,
                                                                   const torch::Tensor& targets,
                                                                   int64_t ignore_index,
                                                                   bool with_grad) {
  static const auto op = find_op<std::tuple<torch::Tensor, torch::Tensor>(
      const torch::Tensor&, const torch::Tensor&, int64_t, bool)>(
      "samout::cross_entropy_sum_forward");
  return op.call(logits, targets, ignore_index, with_grad);
}

}  // namespace samout::ops
