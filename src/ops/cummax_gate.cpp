// cummax_gate's dispatch point, input validation, autograd wiring and the composite reference.
// The kernels themselves live in cummax_gate_cpu.cpp and cummax_gate.cu.
#include "samout/ops/cummax_gate.h"

#include "samout/common/error.h"

namespace samout::ops {

GateImpl parse_gate_impl(const std::string& name) {
  if (name == "auto") return GateImpl::kAuto;
  if (name == "fused") return GateImpl::kFused;
  if (name == "composite") return GateImpl::kComposite;
  throw UsageError("unknown gate implementation '" + name +
                   "' (expected auto, fused or composite)");
}

std::string to_string(GateImpl impl) {
  switch (impl) {
    case GateImpl::kAuto:
      return "auto";
    case GateImpl::kFused:
      return "fused";
    case GateImpl::kComposite:
      return "composite";
  }
  return "?";
}

#ifndef SAMOUT_HAVE_CUDA
bool cuda_kernels_compiled() { return false; }
torch::Tensor cummax_gate_forward_cuda(const torch::Tensor&, const torch::Tensor&,
                                       const torch::Tensor&, torch::Tensor&, torch::Tensor&, bool) {
  TORCH_CHECK(false, "cummax_gate: this build has no CUDA kernels");
}
void cummax_gate_backward_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                               const torch::Tensor&, torch::Tensor&, torch::Tensor&) {
  TORCH_CHECK(false, "cummax_gate: this build has no CUDA kernels");
}
#endif

namespace {

// Shapes and layouts every implementation relies on; checked once here, not in each kernel.
int64_t check_inputs(const torch::Tensor& y, const torch::Tensor& alphas,
                     const torch::Tensor& state) {
  TORCH_CHECK(y.dim() == 3, "cummax_gate: y must be (B, T, 3d), got ", y.sizes());
  TORCH_CHECK(y.size(2) % 3 == 0, "cummax_gate: last dim of y must be 3d, got ", y.size(2));
  TORCH_CHECK(y.is_floating_point(), "cummax_gate: y must be floating, got ", y.scalar_type());
  TORCH_CHECK(alphas.dim() == 1 && alphas.size(0) == 5, "cummax_gate: alphas must be (5,), got ",
              alphas.sizes());
  TORCH_CHECK(alphas.device() == y.device() && alphas.scalar_type() == y.scalar_type(),
              "cummax_gate: alphas must match y's device and dtype");
  const int64_t d = y.size(2) / 3;
  if (state.defined()) {
    TORCH_CHECK(state.dim() == 2 && state.size(0) == y.size(0) && state.size(1) == d,
                "cummax_gate: state must be (B, d) = (", y.size(0), ", ", d, "), got ",
                state.sizes());
    TORCH_CHECK(state.device() == y.device() && state.scalar_type() == y.scalar_type(),
                "cummax_gate: state must match y's device and dtype");
  }
  return d;
}

bool use_cuda(const torch::Tensor& y) { return y.is_cuda(); }

struct ForwardOut {
  torch::Tensor out, last_m;
  // What the backward needs besides y and alphas: the running max m_saved (B, T, d) on the CPU,
  // the carries entering each time chunk, chunk_carry (B, K, d), on CUDA. Undefined for inference.
  torch::Tensor saved;
};

// y may be any view whose last dim is contiguous (the kernels take its strides); the rest are made
// contiguous, which is free for the tensors the model passes.
ForwardOut fused_forward(const torch::Tensor& y_in, const torch::Tensor& alphas_in,
                         const torch::Tensor& state_in, bool save_m) {
  const torch::Tensor y = y_in.stride(2) == 1 ? y_in : y_in.contiguous();
  const torch::Tensor alphas = alphas_in.contiguous();
  const torch::Tensor state = state_in.defined() ? state_in.contiguous() : state_in;
  const int64_t B = y.size(0), T = y.size(1), d = y.size(2) / 3;
  ForwardOut r;
  r.out = torch::empty({B, T, d}, y.options());
  r.last_m = torch::empty({B, d}, y.options());
  if (use_cuda(y)) {
    r.saved = cummax_gate_forward_cuda(y, alphas, state, r.out, r.last_m, save_m);
  } else {
    if (save_m) r.saved = torch::empty({B, T, d}, y.options());
    cummax_gate_forward_cpu(y, alphas, state, r.out, r.saved, r.last_m);
  }
  return r;
}

// The carried-in state is not differentiated, and may be undefined; autograd's apply() rejects an
// undefined tensor argument, so it travels wrapped in a plain struct.
struct StateArg {
  torch::Tensor value;
};

class CummaxGateFunction : public torch::autograd::Function<CummaxGateFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const torch::Tensor& y, const torch::Tensor& alphas,
                                                const StateArg& state) {
    ForwardOut r = fused_forward(y, alphas, state.value, /*save_m=*/true);
    ctx->save_for_backward({y.stride(2) == 1 ? y : y.contiguous(), alphas.contiguous(), r.saved});
    ctx->mark_non_differentiable({r.last_m});
    return {r.out, r.last_m};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor& y = saved[0];
    const torch::Tensor& alphas = saved[1];
    const torch::Tensor& for_backward = saved[2];  // m_saved (CPU) or chunk_carry (CUDA)
    const int64_t B = y.size(0), T = y.size(1), d = y.size(2) / 3;
    torch::Tensor grad_out =
        grads[0].defined() ? grads[0].contiguous() : torch::zeros({B, T, d}, y.options());
    torch::Tensor grad_y = torch::empty({B, T, 3 * d}, y.options());
    torch::Tensor grad_alphas = torch::empty({5}, alphas.options());
    if (use_cuda(y)) {
      cummax_gate_backward_cuda(grad_out, y, alphas, for_backward, grad_y, grad_alphas);
    } else {
      cummax_gate_backward_cpu(grad_out, y, alphas, for_backward, grad_y, grad_alphas);
    }
    return {grad_y, grad_alphas, torch::Tensor()};  // nothing for the state
  }
};

}  // namespace

GateResult cummax_gate_composite(const torch::Tensor& y, const torch::Tensor& alphas,
                                 const torch::Tensor& state) {
  const int64_t d = check_inputs(y, alphas, state);
  const int64_t T = y.size(1);
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

GateResult cummax_gate(const torch::Tensor& y, const torch::Tensor& alphas,
                       const torch::Tensor& state, GateImpl impl) {
  check_inputs(y, alphas, state);
  if (impl == GateImpl::kComposite) return cummax_gate_composite(y, alphas, state);
  if (y.is_cuda() && !cuda_kernels_compiled()) {
    TORCH_CHECK(impl != GateImpl::kFused, "cummax_gate: fused requested but no CUDA kernels built");
    return cummax_gate_composite(y, alphas, state);
  }
  TORCH_CHECK(y.is_cpu() || y.is_cuda(), "cummax_gate: unsupported device ", y.device());
  TORCH_CHECK(y.size(1) > 0, "cummax_gate: empty sequence (T = 0)");
  const bool needs_grad =
      torch::GradMode::is_enabled() && (y.requires_grad() || alphas.requires_grad());
  if (!needs_grad) {  // inference: no autograd node, and nothing saved
    ForwardOut r = fused_forward(y, alphas, state, /*save_m=*/false);
    return {r.out, r.last_m};
  }
  auto outs = CummaxGateFunction::apply(y, alphas, StateArg{state});
  return {outs[0], outs[1]};
}

}  // namespace samout::ops
