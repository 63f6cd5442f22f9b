// cummax_gate's reference: torch.cummax and elementwise ATen ops, differentiated by ATen's autograd.
#include "samout/ops/cummax_gate.h"

namespace samout::ops {

GateResult cummax_gate_composite(const torch::Tensor& y, const torch::Tensor& alphas,
                                 const torch::Tensor& state) {
  check_gate_inputs(y, alphas, state);
  const int64_t T = y.size(1), d = y.size(2) / 3;
  auto a = y.narrow(2, 0, d), b = y.narrow(2, d, d), c = y.narrow(2, 2 * d, d);
  torch::Tensor m;
  if (state.defined()) {
    // The state sits at position -1; cummax's ties-to-latest then lets c_0 win a tie, as it should.
    auto ext = torch::cat({state.detach().unsqueeze(1), c}, /*dim=*/1);
    m = std::get<0>(torch::cummax(ext, /*dim=*/1)).narrow(1, 1, T);
  } else {
    m = std::get<0>(torch::cummax(c, /*dim=*/1));
  }
  auto out =
      (a + b + c + alphas[1] + alphas[4]) * m + alphas[2] * a + alphas[0] * b + alphas[3] * c;
  return {out, m.select(1, T - 1).detach().contiguous()};
}

}  // namespace samout::ops
