// cummax_gate: SamOut's attention replacement, as one fused operation (SPEC.md, "The fused operation").
//
//   y = combined(x)                      (B, T, 3d): a = y[..., 0:d], b = y[..., d:2d], c = y[..., 2d:3d]
//   m_t = max(state, max_{s<=t} c_s)     per batch row and channel; ties take the latest position,
//                                        NaN propagates (the rules of torch.cummax)
//   out = (a + b + c + alpha2 + alpha5) * m + alpha3*a + alpha1*b + alpha4*c          (B, T, d)
//
// The op takes y itself and reads a, b, c as strided views, so neither the forward nor the backward
// ever materialises a chunk or a concatenation: the backward writes dL/dy, the (B, T, 3d) gradient
// that combined's backward consumes, in one pass over time per channel.
//
// Registered with PyTorch's dispatcher as torch.ops.samout.cummax_gate (cummax_gate.cpp):
//   cummax_gate(Tensor y, Tensor alphas, Tensor? state=None) -> (Tensor out, Tensor state)
//   cummax_gate_forward(Tensor y, Tensor alphas, Tensor? state, SymInt chunks)
//       -> (Tensor out, Tensor last_m, Tensor saved)          saved: (B, chunks, d); chunks = 0 saves none
//   cummax_gate_backward(Tensor grad_out, Tensor y, Tensor alphas, Tensor saved)
//       -> (Tensor grad_y, Tensor grad_alphas)
// with CPU (cummax_gate_cpu.cpp), CUDA (cummax_gate.cu), Meta and Autograd (cummax_gate_autograd.cpp)
// kernels. The composite of ATen ops (cummax_gate_composite.cpp) is the reference.
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

// y: (B, T, 3d) floating, last dim contiguous. alphas: (5,) holding alpha1..alpha5, same dtype.
// state: undefined or (B, d); carried in from the previous piece of the sequence, never differentiated.
// Differentiable in y and alphas.
GateResult cummax_gate(const torch::Tensor& y, const torch::Tensor& alphas,
                       const torch::Tensor& state = {}, GateImpl impl = GateImpl::kAuto);

// The composite reference, differentiable through ATen's own autograd.
GateResult cummax_gate_composite(const torch::Tensor& y, const torch::Tensor& alphas,
                                 const torch::Tensor& state = {});

// Shapes, layouts and dtypes every implementation relies on; throws c10::Error naming what is wrong.
void check_gate_inputs(const torch::Tensor& y, const torch::Tensor& alphas,
                       const torch::Tensor& state);

// How many time chunks the forward saves carries for (the forward op's `chunks`): T on the CPU,
// whose backward reads the running max at every position; on CUDA the chunking that fills the GPU.
c10::SymInt gate_saved_chunks(const torch::Tensor& y);

// What the forward and backward ops' kernels share: the checks, the layouts the kernels read (y any
// view with a contiguous last dim, the rest contiguous) and fresh outputs for them to write: the
// forward's or the backward's, never both.
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

// The registered forward and backward ops (schemas above), found once.
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

// ---- Kernels (no autograd). Shapes as above. -----------------------------------------------------
// CPU: the forward saves for the backward m_saved (B, T, d), the running max.
// Forward: writes out and m_saved (m_saved may be undefined when no backward will follow).
void cummax_gate_forward_cpu(const torch::Tensor& y, const torch::Tensor& alphas,
                             const torch::Tensor& state, torch::Tensor& out, torch::Tensor& m_saved,
                             torch::Tensor& last_m);
// Backward: given dL/dout, writes dL/dy (B, T, 3d) and dL/dalphas (5,).
void cummax_gate_backward_cpu(const torch::Tensor& grad_out, const torch::Tensor& y,
                              const torch::Tensor& alphas, const torch::Tensor& m_saved,
                              torch::Tensor& grad_y, torch::Tensor& grad_alphas);

// CUDA: a chunked scan over time (cummax_gate.cu). The forward saves for the backward only the
// running max entering each of the K time chunks it chose, chunk_carry (B, K, d); the backward
// recomputes m from c, which it reads anyway, and takes K (hence the chunk length) from it.
bool cuda_kernels_compiled();
// The chunk count the forward chooses for y: K of gate_cuda::plan_chunks, from the kernels'
// occupancy on the current GPU. Reads only sizes and strides (a fake tensor has no data).
int64_t cummax_gate_cuda_chunks(const torch::Tensor& y);
// Forward: writes out (B, T, d) and last_m (B, d); returns chunk_carry (B, chunks, d) when chunks > 0
// (an undefined tensor otherwise). chunks must be a chunking of T that plan_for_chunks keeps, e.g.
// cummax_gate_cuda_chunks(y). grad_out for the backward is a contiguous (B, T, d).
torch::Tensor cummax_gate_forward_cuda(const torch::Tensor& y, const torch::Tensor& alphas,
                                       const torch::Tensor& state, torch::Tensor& out,
                                       torch::Tensor& last_m, int64_t chunks);
void cummax_gate_backward_cuda(const torch::Tensor& grad_out, const torch::Tensor& y,
                               const torch::Tensor& alphas, const torch::Tensor& chunk_carry,
                               torch::Tensor& grad_y, torch::Tensor& grad_alphas);

}  // namespace samout::ops
