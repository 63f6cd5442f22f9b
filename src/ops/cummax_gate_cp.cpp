// cummax_gate across a context-parallel group (context_parallel.h): the fused op with the carry as
// its state; the scan over slices is cummax_scan.h's phase 2, and the masks below are its element
// rules lifted to tensors.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/functions/utils.h>

#include "samout/ops/context_parallel.h"
#include "samout/ops/cummax_scan.h"

namespace samout::ops {

namespace {

void check_slices(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.dim() >= 1 && t.is_contiguous() &&
                  (t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kDouble),
              what, ": a contiguous float or double (N, ...) tensor");
}

}  // namespace

torch::Tensor slice_carries(const torch::Tensor& maxima) {
  check_slices(maxima, "slice_carries");
  auto carries = torch::empty_like(maxima);
  if (maxima.is_cuda()) {
    slice_carries_cuda(maxima, carries);
    return carries;
  }
  const int64_t N = maxima.size(0), cols = maxima.numel() / std::max<int64_t>(N, 1);
  AT_DISPATCH_FLOATING_TYPES(maxima.scalar_type(), "slice_carries", [&] {
    const scalar_t* M = maxima.data_ptr<scalar_t>();
    scalar_t* C = carries.data_ptr<scalar_t>();
    at::parallel_for(0, cols, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t col = begin; col < end; ++col)
        scan::forward_carries(M + col, N, scan::neg_inf<scalar_t>(), C + col, cols);
    });
  });
  return carries;
}

torch::Tensor slice_gradient_sums(const torch::Tensor& G, const torch::Tensor& maxima,
                                  const torch::Tensor& carries) {
  check_slices(G, "slice_gradient_sums");
  TORCH_CHECK(maxima.sizes() == G.sizes() && carries.sizes() == G.sizes() &&
                  maxima.scalar_type() == G.scalar_type() &&
                  carries.scalar_type() == G.scalar_type() && maxima.is_contiguous() &&
                  carries.is_contiguous() && maxima.device() == G.device() &&
                  carries.device() == G.device(),
              "slice_gradient_sums: G, maxima and carries must match");
  auto R = torch::empty_like(G);
  if (G.is_cuda()) {
    slice_gradient_sums_cuda(G, maxima, carries, R);
    return R;
  }
  const int64_t N = G.size(0), cols = G.numel() / std::max<int64_t>(N, 1);
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "slice_gradient_sums", [&] {
    const scalar_t* g = G.data_ptr<scalar_t>();
    const scalar_t* M = maxima.data_ptr<scalar_t>();
    const scalar_t* C = carries.data_ptr<scalar_t>();
    scalar_t* r = R.data_ptr<scalar_t>();
    at::parallel_for(0, cols, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t col = begin; col < end; ++col)
        scan::backward_carries(g + col, M + col, C + col, N, r + col, cols);
    });
  });
  return R;
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// scan::take_max, elementwise: v when v >= running or v is NaN (ties to the later, NaN propagates).
torch::Tensor take_max(const torch::Tensor& running, const torch::Tensor& v) {
  return torch::where(v.ge(running).logical_or(v.isnan()), v, running);
}

// scan::carry_owns, elementwise: positions whose own running maximum m neither reaches the carry
// nor is NaN are owned by the carry (with m a slice's maximum: the slice is wholly carried).
torch::Tensor wholly_carried(const torch::Tensor& m, const torch::Tensor& carry) {
  return m.ge(carry).logical_or(m.isnan()).logical_not();
}

torch::ScalarType acc_type(const torch::Tensor& t) {
  return t.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat32;
}

struct Carries {
  torch::Tensor maxima;  // (N, B, d): every slice's own maximum
  torch::Tensor carry;   // (N, B, d): the state entering each slice
};

Carries gather_carries(const torch::Tensor& c, const ContextGroup& g) {
  // amax propagates NaN, as take_max does; ties do not matter for the value.
  auto local = c.amax(/*dim=*/1).contiguous();
  Carries r;
  r.maxima = g.all_gather(local);
  // In the accumulation type, exactly: every carry is -inf or one of the maxima.
  r.carry = slice_carries(r.maxima.to(acc_type(c)).contiguous()).to(c.scalar_type());
  return r;
}

struct GroupArg {  // apply() takes tensors and plain values; the group travels by pointer
  const ContextGroup* group;
};

class ContextParallelGate : public torch::autograd::Function<ContextParallelGate> {
 public:
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& y,
                               const torch::Tensor& alphas, const GroupArg& arg) {
    const ContextGroup& g = *arg.group;
    const int64_t d = y.size(2) / 3;
    const Carries cr = gather_carries(y.narrow(2, 2 * d, d), g);
    const auto state = cr.carry[g.index].contiguous();
    GateResult r;
    {
      torch::AutoGradMode enable(true);  // the local op's own graph, differentiated below
      auto y_leaf = y.detach().requires_grad_(true);
      auto a_leaf = alphas.detach().requires_grad_(true);
      r = cummax_gate(y_leaf, a_leaf, state);
      ctx->save_for_backward({y_leaf, a_leaf, r.out, state, cr.maxima, cr.carry});
    }
    ctx->saved_data["index"] = static_cast<int64_t>(g.index);
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(arg.group);
    ctx->mark_non_differentiable({r.state});
    return {r.out.detach(), r.state.detach()};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& y = saved[0];
    const auto& alphas = saved[1];
    const auto& out = saved[2];
    const auto& state = saved[3];
    const auto& maxima = saved[4];
    const auto& carry = saved[5];
    const int64_t i = ctx->saved_data["index"].toInt();
    const auto* g = reinterpret_cast<const ContextGroup*>(ctx->saved_data["group"].toInt());
    const int64_t N = g->size, d = y.size(2) / 3;
    auto grad_out = grads[0].defined() ? grads[0] : torch::zeros_like(out);

    // The local gradients, with the carry as a fixed state.
    auto local = torch::autograd::grad({out}, {y, alphas}, {grad_out});
    auto grad_y = local[0].contiguous();

    const auto acc_t = acc_type(y);
    auto a = y.narrow(2, 0, d), b = y.narrow(2, d, d), c = y.narrow(2, 2 * d, d);
    const auto al = alphas.to(acc_t);
    // dL/dm, and this slice's carry-owned prefix (own running maximum below the carry), whose sum
    // G_i goes to the carry's owner.
    auto gm = grad_out.to(acc_t) * ((a + b + c).to(acc_t) + al[1] + al[4]);
    auto own_max = std::get<0>(torch::cummax(c, /*dim=*/1));
    auto prefix = wholly_carried(own_max, state.unsqueeze(1));
    auto G = g->all_gather(torch::where(prefix, gm, torch::zeros_like(gm)).sum(1).contiguous());

    // R_{i+1}: from the last slice back to i+1, R_k = G_k + (slice k wholly carried ? R_{k+1} : 0).
    const auto Rs = slice_gradient_sums(G.contiguous(), maxima.to(acc_t).contiguous(),
                                        carry.to(acc_t).contiguous());
    // Released at the owner of this slice's last running maximum, unless the slice is wholly
    // carried (then R went on to an earlier slice, through G_i).
    const auto keep = wholly_carried(maxima[i], carry[i]).logical_not();
    if (i + 1 < N) {
      auto m = take_max(state.unsqueeze(1), own_max);  // the running maximum with the carry
      auto owner = c.eq(m).logical_or(c.isnan());
      const int64_t T = c.size(1);
      auto last = (T - 1) - owner.flip({1}).to(torch::kInt).argmax(/*dim=*/1);  // (B, d)
      const auto R = Rs[i + 1];
      auto add = torch::where(keep, R, torch::zeros_like(R)).to(grad_y.scalar_type());
      grad_y.narrow(2, 2 * d, d).scatter_add_(1, last.unsqueeze(1), add.unsqueeze(1));
    }
    return {grad_y, local[1], torch::Tensor()};
  }
};

}  // namespace

GateResult cummax_gate_context_parallel(const torch::Tensor& y, const torch::Tensor& alphas,
                                        const ContextGroup& group) {
  TORCH_CHECK(group.size >= 1 && group.index >= 0 && group.index < group.size && group.all_gather,
              "cummax_gate_context_parallel: bad group");
  if (group.size == 1) return cummax_gate(y, alphas);
  if (!torch::autograd::compute_requires_grad(y, alphas)) {
    const int64_t d = y.size(2) / 3;
    const Carries cr = gather_carries(y.narrow(2, 2 * d, d), group);
    return cummax_gate(y, alphas, cr.carry[group.index].contiguous());
  }
  auto outs = ContextParallelGate::apply(y, alphas, GroupArg{&group});
  return {outs[0], outs[1]};
}

}  // namespace samout::ops
