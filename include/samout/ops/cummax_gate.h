// cummax_gate: the attention replacement as one fused op (docs/model.md, "The fused operation").
//   y (B, T, 3d) = [a | b | c];  m_t = max(state, max_{s<=t} c_s) per channel (torch.cummax's
//   rules: ties take the latest position, NaN propagates);
//   out = (a + b + c + alpha2 + alpha5) * m + alpha3*a + alpha1*b + alpha4*c          (B, T, d)
// a, b, c are read as strided views of y, and the backward writes dL/dy (B, T, 3d) in one pass, so
// no chunk or concatenation is ever materialised. Registered as torch.ops.samout:
//   cummax_gate(Tensor y, Tensor alphas, Tensor? state=None) -> (Tensor out, Tensor state)
//   cummax_gate_forward(Tensor y, Tensor alphas, Tensor? state, SymInt chunks)
//       -> (Tensor out, Tensor last_m, Tensor saved)          saved: (B, chunks, d); chunks = 0 saves none
//   cummax_gate_backward(Tensor grad_out, Tensor y, Tensor alphas, Tensor saved)
//       -> (Tensor grad_y, Tensor grad_alphas)
// Kernels: CPU (cummax_gate_cpu.cpp), CUDA (cummax_gate.cu), Meta (cummax_gate.cpp), Autograd
// (cummax_gate_autograd.cpp); the ATen composite (cummax_gate_composite.cpp) is the reference.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <string>

namespace samout::ops {

enum class GateImpl {
  kAuto,       // fused kernel for the tensor's device
  kFused,      // fused kernel; an error if none exists for the device
  kComposite,  // torch.cummax and elementwise ATen ops: the reference
};

GateImpl parse_gate_impl(const std::string& name);  // "auto" | "fused" | "composite"
std::string to_string(GateImpl impl);

struct GateResult {
  torch::Tensor out;    // (B, T, d)
  torch::Tensor state;  // (B, d): m at the last position, detached; the next call's state
};

// y: (B, T, 3d) floating; alphas: (5,) = alpha1..alpha5, same dtype; state: undefined or (B, d),
// carried in from the previous piece of the sequence, not differentiated (y and alphas are).
GateResult cummax_gate(const torch::Tensor& y, const torch::Tensor& alphas,
                       const torch::Tensor& state = {}, GateImpl impl = GateImpl::kAuto);

// The composite reference, differentiable through ATen's own autograd.
GateResult cummax_gate_composite(const torch::Tensor& y, const torch::Tensor& alphas,
                                 const torch::Tensor& state = {});

// Shapes, layouts and dtypes every implementation relies on; throws c10::Error naming what is wrong.
void check_gate_inputs(const torch::Tensor& y, const torch::Tensor& alphas,
                       const torch::Tensor& state);

// The forward op's `chunks`: T on the CPU (whose backward reads m at every position), on CUDA the
// chunking that fills the GPU; for a traced tensor (symbolic sizes, fake or functional) on CUDA,
// ceil(T / gate_cuda::kTracedChunkLength), read from sizes alone.
c10::SymInt gate_saved_chunks(const torch::Tensor& y);

// The forward or backward op's checked inputs in the layouts the kernels read (y: last dim
// contiguous; the rest contiguous) and fresh outputs for that op.
struct GateCall {
  torch::Tensor y, alphas, state, grad_out;
  torch::Tensor out, last_m;          // forward: (B, T, d), (B, d)
  torch::Tensor grad_y, grad_alphas;  // backward: (B, T, 3d), (5,)
  int64_t B, T, d;
};
GateCall gate_forward_call(const torch::Tensor& y, const torch::Tensor& alphas,
                           const std::optional<torch::Tensor>& state);
GateCall gate_backward_call(const torch::Tensor& grad_out, const torch::Tensor& y,
                            const torch::Tensor& alphas);

// The registered forward and backward ops, found once.
using GateForwardSignature = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>(
    const torch::Tensor&, const torch::Tensor&, const std::optional<torch::Tensor>&, c10::SymInt);
using GateBackwardSignature = std::tuple<torch::Tensor, torch::Tensor>(const torch::Tensor&,
                                                                       const torch::Tensor&,
                                                                       const torch::Tensor&,
                                                                       const torch::Tensor&);
using GateForwardOp = c10::TypedOperatorHandle<GateForwardSignature>;
using GateBackwardOp = c10::TypedOperatorHandle<GateBackwardSignature>;
const GateForwardOp& gate_forward_op();
const GateBackwardOp& gate_backward_op();

// ---- CUDA kernels (cummax_gate.cu; no autograd) -------------------------------------------------
// The forward saves only the running max entering each of its K time chunks, chunk_carry (B, K, d);
// the backward recomputes m from c and takes K (hence the chunk length) from chunk_carry.
bool cuda_kernels_compiled();
// K of gate_cuda::plan_chunks for a real y on its GPU (reads sizes, strides and the pointer).
int64_t cummax_gate_cuda_chunks(const torch::Tensor& y);
// Writes out and last_m; returns chunk_carry (B, chunks, d), or undefined when chunks = 0. chunks
// must be a chunking plan_for_chunks keeps, e.g. cummax_gate_cuda_chunks(y). grad_out: contiguous.
torch::Tensor cummax_gate_forward_cuda(const torch::Tensor& y, const torch::Tensor& alphas,
                                       const torch::Tensor& state, torch::Tensor& out,
                                       torch::Tensor& last_m, int64_t chunks);
void cummax_gate_backward_cuda(const torch::Tensor& grad_out, const torch::Tensor& y,
                               const torch::Tensor& alphas, const torch::Tensor& chunk_carry,
                               torch::Tensor& grad_y, torch::Tensor& grad_alphas);

}  // namespace samout::ops
