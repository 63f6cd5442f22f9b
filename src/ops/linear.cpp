// linear (linear.h): at::linear, with decoding's few-row products sent to the GEMV.
#include "samout/ops/linear.h"

#include "samout/ops/gemv.h"

namespace samout::ops {
namespace {
thread_local bool at_linear_only = false;  // set by AtLinearOnlyGuard
}  // namespace

AtLinearOnlyGuard::AtLinearOnlyGuard() : saved_(at_linear_only) { at_linear_only = true; }
AtLinearOnlyGuard::~AtLinearOnlyGuard() { at_linear_only = saved_; }

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  const auto opt_b = b.defined() ? c10::optional<torch::Tensor>(b) : c10::nullopt;
  if (at_linear_only) return at::linear(x, w, opt_b);
  // linear_rows takes the GEMV only for few fp32 CPU rows without autograd, else at::linear.
  return linear_rows(x, w, opt_b);
}

}  // namespace samout::ops
