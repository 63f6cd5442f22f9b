// Tolerances and the elementwise comparison shared by the cummax_gate CUDA test and its CPU
// emulation test: both compare a kernel's results with the CPU kernel's (or the composite's).
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

namespace samout::ops::testing {

// Elementwise |got - want| <= rtol * |want| + atol * max|want|, and NaN exactly where want has NaN.
struct Tol {
  double rtol, atol;
};

// fp64 and fp32 differ from the CPU only by rounding (the GPU contracts a*b+c into FMAs); bf16
// outputs are rounded once from fp32 (half an ulp: at most 2^-8 relative, 7 stored mantissa bits),
// so 2^-7 leaves a factor 2 (the CPU's own bf16 kernel passes at 2^-8 against its fp32 run).
inline Tol tol_for(torch::ScalarType dtype) {
  if (dtype == torch::kDouble) return {1e-12, 1e-12};
  if (dtype == torch::kFloat) return {1e-5, 1e-5};
  return {1.0 / 128, 1e-3};
}

inline void expect_close(const torch::Tensor& got_in, const torch::Tensor& want_in, Tol tol,
                         const std::string& what) {
  const auto got = got_in.to(torch::kDouble), want = want_in.to(torch::kDouble);
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_TRUE(torch::equal(got.isnan(), want.isnan()))
      << what << ": NaN pattern differs (" << got.isnan().sum().item<int64_t>() << " vs "
      << want.isnan().sum().item<int64_t>() << " NaN)";
  auto keep = ~(got.isnan() | want.isnan());
  auto g = got.masked_select(keep), w = want.masked_select(keep);
  if (w.numel() == 0) return;
  const double scale = w.abs().max().item<double>();
  auto excess = (g - w).abs() - (tol.rtol * w.abs() + tol.atol * scale);
  const int64_t worst = excess.argmax().item<int64_t>();
  EXPECT_LE(excess[worst].item<double>(), 0.0)
      << what << ": got " << g[worst].item<double>() << ", want " << w[worst].item<double>()
      << " (max |want| " << scale << ")";
}

}  // namespace samout::ops::testing
