// cummax_gate's schemas, input checks, Meta kernels, CUDA stubs and the C++ entry the model calls.
#include "samout/ops/cummax_gate.h"

#include <torch/library.h>

#include <utility>

#include "samout/common/error.h"
#include "samout/ops/context_parallel.h"
#include "samout/ops/cummax_scan_cuda.cuh"
#include "samout/ops/dispatch.h"

namespace samout::ops {

constexpr std::pair<GateImpl, const char*> kGateImplNames[] = {
    {GateImpl::kAuto, "auto"}, {GateImpl::kFused, "fused"}, {GateImpl::kComposite, "composite"}};

GateImpl parse_gate_impl(const std::string& name) {
  for (const auto& [impl, impl_name] : kGateImplNames)
    if (name == impl_name) return impl;
  throw UsageError("unknown gate implementation '" + name +
                   "' (expected auto, fused or composite)");
}

std::string to_string(GateImpl impl) {
  for (const auto& [known, impl_name] : kGateImplNames)
    if (impl == known) return impl_name;
  return "?";
}

#ifndef SAMOUT_HAVE_CUDA  // stubs for the CUDA kernels' entries (cummax_gate.cu)
bool cuda_kernels_compiled() { return false; }
int64_t cummax_gate_cuda_chunks(const torch::Tensor&) {
  TORCH_CHECK(false, "cummax_gate: this build has no CUDA kernels");
}
torch::Tensor cummax_gate_forward_cuda(const torch::Tensor&, const torch::Tensor&,
                                       const torch::Tensor&, torch::Tensor&, torch::Tensor&,
                                       int64_t) {
  TORCH_CHECK(false, "cummax_gate: this build has no CUDA kernels");
}
void cummax_gate_backward_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                               const torch::Tensor&, torch::Tensor&, torch::Tensor&) {
  TORCH_CHECK(false, "cummax_gate: this build has no CUDA kernels");
}
void slice_carries_cuda(const torch::Tensor&, torch::Tensor&) {
  TORCH_CHECK(false, "slice_carries: this build has no CUDA kernels");
}
void slice_gradient_sums_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                              torch::Tensor&) {
  TORCH_CHECK(false, "slice_gradient_sums: this build has no CUDA kernels");
}
#endif

// Symbolic sizes throughout: the checks also run on fake tensors (torch.compile, opcheck).
void check_gate_inputs(const torch::Tensor& y, const torch::Tensor& alphas,
                       const torch::Tensor& state) {
  TORCH_CHECK(y.dim() == 3, "cummax_gate: y must be (B, T, 3d), got ", y.sym_sizes());
  TORCH_CHECK(y.sym_size(2) % 3 == 0, "cummax_gate: last dim of y must be 3d, got ", y.sym_size(2));
  TORCH_CHECK(y.is_floating_point(), "cummax_gate: y must be floating, got ", y.scalar_type());
  TORCH_CHECK(y.sym_size(1) > 0, "cummax_gate: empty sequence (T = 0)");
  TORCH_CHECK(alphas.dim() == 1 && alphas.sym_size(0) == 5,
              "cummax_gate: alphas must be (5,), got ", alphas.sym_sizes());
  TORCH_CHECK(alphas.device() == y.device() && alphas.scalar_type() == y.scalar_type(),
              "cummax_gate: alphas must match y's device and dtype");
  if (!state.defined()) return;
  const c10::SymInt d = y.sym_size(2) / 3;
  TORCH_CHECK(state.dim() == 2 && state.sym_size(0) == y.sym_size(0) && state.sym_size(1) == d,
              "cummax_gate: state must be (B, d) = (", y.sym_size(0), ", ", d, "), got ",
              state.sym_sizes());
  TORCH_CHECK(state.device() == y.device() && state.scalar_type() == y.scalar_type(),
              "cummax_gate: state must match y's device and dtype");
}

namespace {

// The inputs as the kernels read them; no outputs yet.
GateCall gate_inputs(const torch::Tensor& y, const torch::Tensor& alphas,
                     const std::optional<torch::Tensor>& state) {
  GateCall c;
  c.state = state ? state->contiguous() : torch::Tensor();
  check_gate_inputs(y, alphas, c.state);
  c.y = y.stride(2) == 1 ? y : y.contiguous();
  c.alphas = alphas.contiguous();
  c.B = y.size(0), c.T = y.size(1), c.d = y.size(2) / 3;
  return c;
}

}  // namespace

GateCall gate_forward_call(const torch::Tensor& y, const torch::Tensor& alphas,
                           const std::optional<torch::Tensor>& state) {
  GateCall c = gate_inputs(y, alphas, state);
  c.out = torch::empty({c.B, c.T, c.d}, y.options());
  c.last_m = torch::empty({c.B, c.d}, y.options());
  return c;
}

GateCall gate_backward_call(const torch::Tensor& grad_out, const torch::Tensor& y,
                            const torch::Tensor& alphas) {
  GateCall c = gate_inputs(y, alphas, std::nullopt);
  TORCH_CHECK(grad_out.sizes() == torch::IntArrayRef({c.B, c.T, c.d}),
              "cummax_gate_backward: grad_out must be (B, T, d) = (", c.B, ", ", c.T, ", ", c.d,
              "), got ", grad_out.sizes());
  c.grad_out = grad_out.contiguous();
  c.grad_y = torch::empty({c.B, c.T, 3 * c.d}, y.options());
  c.grad_alphas = torch::empty({5}, alphas.options());
  return c;
}

namespace {

// A tensor being traced (torch.compile, opcheck, AOT dispatch): symbolic sizes, or no real memory
// behind it (fake and functional tensors reach the Autograd kernel with the Python or Functionalize
// key). Its strides, storage offset and pointer say nothing about the tensor the kernel will run on.
bool is_traced(const torch::Tensor& y) {
  return y.unsafeGetTensorImpl()->has_symbolic_sizes_strides() || !y.has_storage() ||
         y.key_set().has_any(
             c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::Functionalize}));
}

}  // namespace

c10::SymInt gate_saved_chunks(const torch::Tensor& y) {
  if (!y.is_cuda()) return y.sym_size(1);
  if (!is_traced(y)) return cummax_gate_cuda_chunks(y);
  // Traced: chunks of a fixed length, as an expression in T, so that a dynamic T stays dynamic and
  // no GPU is asked. Every ceil(T / kTracedChunkLength) is a chunking the kernel keeps.
  constexpr int64_t L = gate_cuda::kTracedChunkLength;
  return (y.sym_size(1) + (L - 1)) / L;
}

namespace {

using Outputs = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>;

Outputs forward_meta(const torch::Tensor& y, const torch::Tensor& alphas,
                     const std::optional<torch::Tensor>& state, c10::SymInt chunks) {
  check_gate_inputs(y, alphas, state.value_or(torch::Tensor()));
  const c10::SymInt B = y.sym_size(0), T = y.sym_size(1), d = y.sym_size(2) / 3;
  return {at::empty_symint({B, T, d}, y.options()), at::empty_symint({B, d}, y.options()),
          at::empty_symint({B, chunks, d}, y.options())};
}

std::tuple<torch::Tensor, torch::Tensor> backward_meta(const torch::Tensor& grad_out,
                                                       const torch::Tensor& y,
                                                       const torch::Tensor& alphas,
                                                       const torch::Tensor& saved) {
  return {at::empty_symint(y.sym_sizes(), y.options()), at::empty_like(alphas)};
}

// Without autograd in the dispatch (inference mode, meta tensors): the forward, nothing saved.
std::tuple<torch::Tensor, torch::Tensor> without_autograd(const torch::Tensor& y,
                                                          const torch::Tensor& alphas,
                                                          const std::optional<torch::Tensor>& s) {
  auto [out, last_m, saved] = gate_forward_op().call(y, alphas, s, c10::SymInt(0));
  return {out, last_m};
}

}  // namespace

const GateForwardOp& gate_forward_op() {
  static const auto op = find_op<GateForwardSignature>("samout::cummax_gate_forward");
  return op;
}

const GateBackwardOp& gate_backward_op() {
  static const auto op = find_op<GateBackwardSignature>("samout::cummax_gate_backward");
  return op;
}

GateResult cummax_gate(const torch::Tensor& y, const torch::Tensor& alphas,
                       const torch::Tensor& state, GateImpl impl) {
  check_gate_inputs(y, alphas, state);
  if (impl == GateImpl::kComposite) return cummax_gate_composite(y, alphas, state);
  if (y.is_cuda() && !cuda_kernels_compiled()) {
    TORCH_CHECK(impl != GateImpl::kFused, "cummax_gate: fused requested but no CUDA kernels built");
    return cummax_gate_composite(y, alphas, state);
  }
  static const auto op = find_op<std::tuple<torch::Tensor, torch::Tensor>(
      const torch::Tensor&, const torch::Tensor&, const std::optional<torch::Tensor>&)>(
      "samout::cummax_gate");
  auto [out, last_m] =
      op.call(y, alphas, state.defined() ? std::optional<torch::Tensor>(state) : std::nullopt);
  return {out, last_m};
}

TORCH_LIBRARY_FRAGMENT(samout, m) {
  m.def("cummax_gate(Tensor y, Tensor alphas, Tensor? state=None) -> (Tensor, Tensor)");
  m.def(
      "cummax_gate_forward(Tensor y, Tensor alphas, Tensor? state, SymInt chunks) -> "
      "(Tensor, Tensor, Tensor)");
  m.def(
      "cummax_gate_backward(Tensor grad_out, Tensor y, Tensor alphas, Tensor saved) -> "
      "(Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(samout, Meta, m) {
  m.impl("cummax_gate_forward", TORCH_FN(forward_meta));
  m.impl("cummax_gate_backward", TORCH_FN(backward_meta));
}

TORCH_LIBRARY_IMPL(samout, CompositeExplicitAutograd, m) {
  m.impl("cummax_gate", TORCH_FN(without_autograd));
}

}  // namespace samout::ops
