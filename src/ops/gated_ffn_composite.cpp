// gated_ffn's composite (gated_ffn.h): the reference from ATen ops, and the op's kernel where
// autograd is not in the dispatch (inference mode, meta tensors).
#include <torch/library.h>

#include "samout/ops/gated_ffn.h"
#include "samout/ops/linear.h"

namespace samout::ops {

torch::Tensor gated_ffn_composite(const torch::Tensor& y, const torch::Tensor& w1,
                                  const torch::Tensor& b1, const torch::Tensor& wg,
                                  const torch::Tensor& bg, const torch::Tensor& w2,
                                  const torch::Tensor& b2) {
  auto h = linear(y, w1, b1) * torch::relu(linear(y, wg, bg));
  return linear(h, w2, b2);
}

TORCH_LIBRARY_IMPL(samout, CompositeExplicitAutograd, m) {
  m.impl("gated_ffn", TORCH_FN(gated_ffn_composite));
}

}  // namespace samout::ops
