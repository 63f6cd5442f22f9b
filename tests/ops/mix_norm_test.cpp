// mix_layer_norm's fused CPU kernel against the composite of ATen ops, in double and in float:
// the output and the gradients in f, x, alpha, gamma and beta, with and without the residual, at
// awkward sizes (d below, at and above the kernel's 16 lanes; rows below and above its 32-row
// blocks), with strided and broadcast inputs; bitwise equal results at 1 and 2 threads; that
// fp32 on the CPU really takes the fused path, in inference mode too.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

#include <string>
#include <tuple>
#include <vector>

#include "samout/ops/mix_norm.h"

namespace samout::ops {
namespace {

constexpr double kEps = 1e-5;

double rel_err(const torch::Tensor& got, const torch::Tensor& want) {
  const auto w = want.to(torch::kDouble);
  const double scale = std::max(1.0, w.abs().max().item<double>());
  return (got.to(torch::kDouble) - w).abs().max().item<double>() / scale;
}

// The leaves of one call, and what the call and its backward produced.
struct Run {
  torch::Tensor out, df, dx, dalpha, dgamma, dbeta;
};

struct Inputs {
  torch::Tensor f, x, alpha, gamma, beta, w;  // w: the upstream gradient, via sum(out * w)
};

Inputs make_inputs(int64_t rows, int64_t d) {
  Inputs in;
  in.f = 2 * torch::randn({rows, d}) + 0.5;
  in.x = torch::randn({rows, d}) - 0.25;
  in.alpha = torch::tensor(0.3f);
  in.gamma = 1 + 0.5 * torch::randn({d});
  in.beta = 0.1 * torch::randn({d});
  in.w = torch::randn({rows, d});
  return in;
}

// Runs fn on copies of the inputs as leaves in `dtype`; `upstream` picks the loss.
template <class Fn>
Run run(const Inputs& in, torch::ScalarType dtype, bool add_residual, Fn fn) {
  auto leaf = [&](const torch::Tensor& t) { return t.to(dtype).detach().requires_grad_(); };
  auto f = leaf(in.f), x = leaf(in.x), alpha = leaf(in.alpha), gamma = leaf(in.gamma),
       beta = leaf(in.beta);
  Run r;
  r.out = fn(f, x, alpha, gamma, beta, kEps, add_residual);
  (r.out * in.w.to(dtype)).sum().backward();
  r.out = r.out.detach();
  r.df = f.grad();
  r.dx = x.grad();
  r.dalpha = alpha.grad();
  r.dgamma = gamma.grad();
  r.dbeta = beta.grad();
  return r;
}

void expect_close(const Run& got, const Run& want, double tol, const std::string& what) {
  EXPECT_LT(rel_err(got.out, want.out), tol) << what << ": out";
  EXPECT_LT(rel_err(got.df, want.df), tol) << what << ": df";
  EXPECT_LT(rel_err(got.dx, want.dx), tol) << what << ": dx";
  // dalpha and dgamma are sums over all rows: allow for float accumulation over up to 1568 rows.
  EXPECT_LT(rel_err(got.dalpha, want.dalpha), 10 * tol) << what << ": dalpha";
  EXPECT_LT(rel_err(got.dgamma, want.dgamma), 10 * tol) << what << ": dgamma";
  EXPECT_LT(rel_err(got.dbeta, want.dbeta), 10 * tol) << what << ": dbeta";
  EXPECT_EQ(got.dalpha.sizes(), want.dalpha.sizes()) << what;
}

void expect_equal(const Run& a, const Run& b, const std::string& what) {
  EXPECT_TRUE(torch::equal(a.out, b.out)) << what << ": out";
  EXPECT_TRUE(torch::equal(a.df, b.df)) << what << ": df";
  EXPECT_TRUE(torch::equal(a.dx, b.dx)) << what << ": dx";
  EXPECT_TRUE(torch::equal(a.dalpha, b.dalpha)) << what << ": dalpha";
  EXPECT_TRUE(torch::equal(a.dgamma, b.dgamma)) << what << ": dgamma";
  EXPECT_TRUE(torch::equal(a.dbeta, b.dbeta)) << what << ": dbeta";
}

// ---- values and gradients against the composite ---------------------------------------------------

class MixNormShapes : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, bool>> {};

TEST_P(MixNormShapes, FusedMatchesCompositeInDoubleAndFloat) {
  const auto [rows, d, residual] = GetParam();
  torch::manual_seed(rows * 1000 + d);
  const auto in = make_inputs(rows, d);
  ASSERT_TRUE(mix_norm_uses_fused(in.f, in.x, in.alpha, in.gamma, in.beta));
  const auto fused = run(in, torch::kFloat32, residual, mix_layer_norm);
  const auto ref64 = run(in, torch::kDouble, residual, mix_layer_norm_composite);
  const auto ref32 = run(in, torch::kFloat32, residual, mix_layer_norm_composite);
  const std::string what = std::to_string(rows) + "x" + std::to_string(d) + (residual ? " +x" : "");
  expect_close(fused, ref64, 2e-5, what + " vs double");
  expect_close(fused, ref32, 2e-5, what + " vs float");
  // The float composite is no closer to the double one than the fused kernel is, give or take.
  EXPECT_LT(rel_err(fused.dgamma, ref64.dgamma), 4 * rel_err(ref32.dgamma, ref64.dgamma) + 1e-6)
      << what;
}

INSTANTIATE_TEST_SUITE_P(RowsD, MixNormShapes,
                         ::testing::Combine(::testing::Values(1, 7, 33, 1568),
                                            ::testing::Values(5, 33, 512), ::testing::Bool()));

TEST(MixNorm, DoubleTakesTheCompositeAndMatchesIt) {
  torch::manual_seed(3);
  const auto in = make_inputs(9, 17);
  const auto f = in.f.to(torch::kDouble);
  EXPECT_FALSE(mix_norm_uses_fused(f, in.x.to(torch::kDouble), in.alpha.to(torch::kDouble),
                                   in.gamma.to(torch::kDouble), in.beta.to(torch::kDouble)));
  const auto got = run(in, torch::kDouble, true, mix_layer_norm);
  const auto want = run(in, torch::kDouble, true, mix_layer_norm_composite);
  expect_close(got, want, 1e-12, "double");
}

// ---- layouts ---------------------------------------------------------------------------------------

TEST(MixNorm, StridedInputsAndBroadcastGradient) {
  torch::manual_seed(4);
  const int64_t B = 3, T = 11, d = 40;
  // f: a transposed view (last dim not unit-stride); x: narrowed in T (rows strided in memory).
  const auto f_base = torch::randn({d, T, B});
  const auto x_base = torch::randn({B, T + 5, d});
  const auto alpha = torch::tensor(0.7f);
  const auto gamma = torch::randn({2 * d}).slice(0, 0, 2 * d, 2);  // stride 2
  const auto beta = torch::randn({d});
  for (bool residual : {false, true}) {
    auto mk = [&](torch::ScalarType dt) {
      auto leaf = [&](const torch::Tensor& t) { return t.to(dt).detach().requires_grad_(); };
      return std::vector<torch::Tensor>{leaf(f_base), leaf(x_base), leaf(alpha), leaf(gamma),
                                        leaf(beta)};
    };
    auto a = mk(torch::kFloat32), b = mk(torch::kDouble);
    auto fa = a[0].permute({2, 1, 0}), xa = a[1].narrow(1, 2, T);
    auto fb = b[0].permute({2, 1, 0}), xb = b[1].narrow(1, 2, T);
    ASSERT_FALSE(fa.is_contiguous());
    ASSERT_FALSE(xa.is_contiguous());
    ASSERT_TRUE(mix_norm_uses_fused(fa, xa, a[2], a[3], a[4]));
    auto oa = mix_layer_norm(fa, xa, a[2], a[3], a[4], kEps, residual);
    auto ob = mix_layer_norm_composite(fb, xb, b[2], b[3], b[4], kEps, residual);
    EXPECT_EQ(oa.sizes(), ob.sizes());
    EXPECT_LT(rel_err(oa, ob), 2e-5);
    // sum() hands back a gradient broadcast from a scalar: every stride 0.
    oa.sum().backward();
    ob.sum().backward();
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_TRUE(a[i].grad().defined()) << i;
      EXPECT_LT(rel_err(a[i].grad(), b[i].grad()), 2e-4)
          << "input " << i << " residual " << residual;
    }
  }
}

TEST(MixNorm, LeadingDimsAndOneElementAlpha) {
  torch::manual_seed(5);
  auto f = torch::randn({2, 3, 4, 24}, torch::requires_grad());
  auto x = torch::randn({2, 3, 4, 24}, torch::requires_grad());
  auto alpha = torch::full({1}, 0.4f, torch::requires_grad());  // (1,), not 0-dim
  auto gamma = torch::randn({24}, torch::requires_grad());
  auto beta = torch::randn({24}, torch::requires_grad());
  auto out = mix_layer_norm(f, x, alpha, gamma, beta, kEps, true);
  EXPECT_EQ(out.sizes(), f.sizes());
  (out * out).sum().backward();
  EXPECT_EQ(alpha.grad().sizes(), alpha.sizes());
  auto alpha2 = alpha.detach().clone().requires_grad_();
  auto want = mix_layer_norm_composite(f.detach(), x.detach(), alpha2, gamma.detach(),
                                       beta.detach(), kEps, true);
  (want * want).sum().backward();
  EXPECT_LT(rel_err(out, want), 2e-5);
  EXPECT_LT(rel_err(alpha.grad(), alpha2.grad()), 1e-4);
}

// ---- dispatch --------------------------------------------------------------------------------------

TEST(MixNorm, Fp32CpuTakesTheFusedKernel) {
  torch::manual_seed(6);
  const auto in = make_inputs(4, 8);
  EXPECT_TRUE(mix_norm_uses_fused(in.f, in.x, in.alpha, in.gamma, in.beta));
  auto f = in.f.clone().requires_grad_();
  auto out = mix_layer_norm(f, in.x, in.alpha, in.gamma, in.beta, kEps, false);
  ASSERT_TRUE(out.grad_fn());
  EXPECT_NE(out.grad_fn()->name().find("MixLayerNorm"), std::string::npos) << out.grad_fn()->name();
  // What the composite would have built instead.
  auto ref = mix_layer_norm_composite(f, in.x, in.alpha, in.gamma, in.beta, kEps, false);
  EXPECT_EQ(ref.grad_fn()->name().find("MixLayerNorm"), std::string::npos);

  EXPECT_FALSE(mix_norm_uses_fused(in.f.to(torch::kBFloat16), in.x, in.alpha, in.gamma, in.beta));
  EXPECT_FALSE(mix_norm_uses_fused(in.f, in.x.narrow(0, 0, 2), in.alpha, in.gamma, in.beta));
  {
    at::autocast::set_autocast_enabled(at::kCPU, true);
    EXPECT_FALSE(mix_norm_uses_fused(in.f, in.x, in.alpha, in.gamma, in.beta));
    at::autocast::set_autocast_enabled(at::kCPU, false);
  }
}

TEST(MixNorm, BadShapesAreRefused) {
  const auto f = torch::randn({3, 8});
  EXPECT_THROW(
      mix_layer_norm(f, f, torch::ones({2}), torch::ones({8}), torch::zeros({8}), kEps, false),
      c10::Error);
  EXPECT_THROW(
      mix_layer_norm(f, f, torch::tensor(0.5f), torch::ones({7}), torch::zeros({8}), kEps, false),
      c10::Error);
}

TEST(MixNorm, NoGradForwardMatches) {
  torch::manual_seed(7);
  const auto in = make_inputs(70, 64);
  torch::NoGradGuard ng;
  const auto got = mix_layer_norm(in.f, in.x, in.alpha, in.gamma, in.beta, kEps, true);
  const auto want = mix_layer_norm_composite(
      in.f.to(torch::kDouble), in.x.to(torch::kDouble), in.alpha.to(torch::kDouble),
      in.gamma.to(torch::kDouble), in.beta.to(torch::kDouble), kEps, true);
  EXPECT_LT(rel_err(got, want), 2e-5);
}

// In inference mode autograd is not in the dispatch and the CompositeExplicitAutograd kernel runs:
// for fp32 CPU tensors still the fused forward. (Meta tensors are tested from Python, where ATen's
// meta kernels for layer_norm are registered.)
TEST(MixNorm, InferenceModeTakesTheFusedForward) {
  torch::manual_seed(8);
  const auto in = make_inputs(70, 64);
  torch::Tensor no_grad, inference;
  {
    torch::NoGradGuard ng;
    no_grad = mix_layer_norm(in.f, in.x, in.alpha, in.gamma, in.beta, kEps, true);
  }
  {
    c10::InferenceMode im;
    inference = mix_layer_norm(in.f, in.x, in.alpha, in.gamma, in.beta, kEps, true);
  }
  EXPECT_TRUE(torch::equal(no_grad, inference));
}

// ---- threads ---------------------------------------------------------------------------------------

TEST(MixNorm, OneAndTwoThreadsAreBitwiseEqual) {
  const int saved = at::get_num_threads();
  for (auto [rows, d] : {std::pair<int64_t, int64_t>{1568, 512}, {301, 33}}) {
    torch::manual_seed(rows + d);
    const auto in = make_inputs(rows, d);
    for (bool residual : {false, true}) {
      at::set_num_threads(1);
      const auto one = run(in, torch::kFloat32, residual, mix_layer_norm);
      at::set_num_threads(2);
      ASSERT_EQ(at::get_num_threads(), 2);
      const auto two = run(in, torch::kFloat32, residual, mix_layer_norm);
      expect_equal(one, two, std::to_string(rows) + "x" + std::to_string(d));
    }
  }
  at::set_num_threads(saved);
}

}  // namespace
}  // namespace samout::ops
