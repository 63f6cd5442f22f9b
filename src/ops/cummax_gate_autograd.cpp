// cummax_gate's autograd: a Function over the registered forward and backward ops, registered as
// the op's Autograd kernel. The forward saves y, the alphas and the kernel's carries (`saved`).
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "samout/ops/cummax_gate.h"

namespace samout::ops {
namespace {

// The carried-in state is not differentiated, and may be undefined; autograd's apply() rejects an
// undefined tensor argument, so it travels wrapped in a plain struct.
struct StateArg {
  std::optional<torch::Tensor> value;
};

class CummaxGateFunction : public torch::autograd::Function<CummaxGateFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const torch::Tensor& y, const torch::Tensor& alphas,
                                                const StateArg& state) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, last_m, saved] =
        gate_forward_op().call(y, alphas, state.value, gate_saved_chunks(y));
    ctx->save_for_backward({y, alphas, saved});
    ctx->mark_non_differentiable({last_m});
    return {out, last_m};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &y = saved[0], &alphas = saved[1];
    const torch::Tensor grad_out =
        grads[0].defined()
            ? grads[0].contiguous()
            : at::zeros_symint({y.sym_size(0), y.sym_size(1), y.sym_size(2) / 3}, y.options());
    auto [grad_y, grad_alphas] = gate_backward_op().call(grad_out, y, alphas, saved[2]);
    return {grad_y, grad_alphas, torch::Tensor()};  // nothing for the state
  }
};

std::tuple<torch::Tensor, torch::Tensor> cummax_gate_autograd(
    const torch::Tensor& y, const torch::Tensor& alphas,
    const std::optional<torch::Tensor>& state) {
  if (!torch::autograd::compute_requires_grad(y, alphas)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // inference: nothing saved
    auto [out, last_m, saved] = gate_forward_op().call(y, alphas, state, c10::SymInt(0));
    return {out, last_m};
  }
  auto outs = CummaxGateFunction::apply(y, alphas, StateArg{state});
  return {outs[0], outs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(samout, Autograd, m) { m.impl("cummax_gate", TORCH_FN(cummax_gate_autograd)); }

}  // namespace samout::ops
