// The fused cummax_gate kernels against the composite of ATen ops (the reference), in double:
// forward, the carried state, and the gradients of a, b, c (one (B, T, 3d) gradient) and of all
// five alphas, on random inputs with many ties and some NaNs, at awkward sizes. The CUDA kernels
// are tested against the CPU kernel in cummax_gate_cuda_test.cpp (ctest label gpu).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "samout/ops/cummax_gate.h"

namespace samout::ops {
namespace {

struct Case {
  int64_t B, T, d;
  bool with_state;
  bool strided;  // y is a view with a padded row stride, as a slice of a larger buffer would be
  bool nans;
};

std::ostream& operator<<(std::ostream& os, const Case& c) {
  return os << "B" << c.B << "_T" << c.T << "_d" << c.d << (c.with_state ? "_state" : "")
            << (c.strided ? "_strided" : "") << (c.nans ? "_nan" : "");
}

// Values on a coarse grid (multiples of 0.5 in [-2, 2]) so that the running max ties often.
torch::Tensor tie_heavy(torch::IntArrayRef shape, torch::TensorOptions opts) {
  return torch::round(torch::randn(shape, opts) * 2).clamp(-4, 4) / 2;
}

struct Outputs {
  torch::Tensor out, state, grad_y, grad_alphas;
};

Outputs run(GateImpl impl, const torch::Tensor& y_base, const torch::Tensor& alphas_base,
            const torch::Tensor& state, const torch::Tensor& grad_out, int64_t d, bool strided) {
  auto leaf = y_base.clone().requires_grad_(true);
  auto y = strided ? leaf.narrow(2, 0, 3 * d) : leaf;
  auto alphas = alphas_base.clone().requires_grad_(true);
  auto r = cummax_gate(y, alphas, state, impl);
  r.out.backward(grad_out);
  auto gy = leaf.grad();
  return {r.out.detach(), r.state, strided ? gy.narrow(2, 0, 3 * d) : gy, alphas.grad()};
}

void expect_same(const torch::Tensor& got, const torch::Tensor& want, const char* what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  // NaN where the reference has NaN, and close elsewhere.
  EXPECT_TRUE(torch::equal(got.isnan(), want.isnan())) << what << ": NaN pattern differs";
  auto ok = ~want.isnan();
  auto w = want.masked_select(ok);
  if (w.numel() == 0) return;
  const double diff = (got.masked_select(ok) - w).abs().max().item<double>();
  EXPECT_LE(diff, 1e-10 * (1 + w.abs().max().item<double>())) << what;
}

class FusedVsComposite : public ::testing::TestWithParam<Case> {};

TEST_P(FusedVsComposite, ForwardAndGradientsMatch) {
  const Case c = GetParam();
  torch::manual_seed(c.B * 1000 + c.T * 10 + c.d);
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const int64_t width = c.strided ? 3 * c.d + 5 : 3 * c.d;
  auto y = tie_heavy({c.B, c.T, width}, opts);
  if (c.nans) {
    // A NaN in c (which then dominates the running max), one in a, one in b.
    y.index_put_({0, c.T / 2, 2 * c.d + c.d / 2}, std::nan(""));
    y.index_put_({c.B - 1, 0, 0}, std::nan(""));
    y.index_put_({c.B - 1, c.T - 1, c.d}, std::nan(""));
  }
  auto alphas = torch::tensor({0.3, -0.7, 1.1, 0.25, -1.5}, opts);  // all distinct
  auto state = c.with_state ? tie_heavy({c.B, c.d}, opts) : torch::Tensor();
  auto grad_out = torch::randn({c.B, c.T, c.d}, opts);

  auto fused = run(GateImpl::kFused, y, alphas, state, grad_out, c.d, c.strided);
  auto ref = run(GateImpl::kComposite, y, alphas, state, grad_out, c.d, c.strided);
  expect_same(fused.out, ref.out, "out");
  expect_same(fused.state, ref.state, "state");
  expect_same(fused.grad_y.narrow(2, 0, c.d), ref.grad_y.narrow(2, 0, c.d), "grad a");
  expect_same(fused.grad_y.narrow(2, c.d, c.d), ref.grad_y.narrow(2, c.d, c.d), "grad b");
  expect_same(fused.grad_y.narrow(2, 2 * c.d, c.d), ref.grad_y.narrow(2, 2 * c.d, c.d), "grad c");
  for (int k = 0; k < 5; ++k) {
    SCOPED_TRACE("alpha" + std::to_string(k + 1));
    expect_same(fused.grad_alphas[k], ref.grad_alphas[k], "grad alpha");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Sizes, FusedVsComposite,
    ::testing::Values(Case{1, 1, 1, false, false, false}, Case{2, 1, 5, true, false, false},
                      Case{3, 7, 13, false, false, false}, Case{3, 7, 13, true, true, false},
                      Case{2, 33, 67, false, false, true}, Case{2, 33, 67, true, true, true},
                      Case{1, 200, 130, false, true, false}, Case{4, 64, 64, true, false, true}),
    [](const auto& info) {
      std::ostringstream os;
      os << info.param;
      return os.str();
    });

TEST(CummaxGate, TiesSendGradientToTheLatestPosition) {
  // c = [1, 1, 0]: the maximum at t=1 and t=2 is the tie at position 1, the latest.
  auto y = torch::zeros({1, 3, 3}, torch::kDouble);
  y.index_put_({0, 0, 2}, 1.0);
  y.index_put_({0, 1, 2}, 1.0);
  y.requires_grad_(true);
  auto alphas = torch::zeros({5}, torch::kDouble).requires_grad_(true);
  auto r = cummax_gate(y, alphas, {}, GateImpl::kFused);
  r.out.sum().backward();
  auto gc = y.grad().select(2, 2).squeeze(0);
  // dout_t/dm_t = a+b+c (alphas are 0): t0: 1 -> position 0; t1: 1 and t2: 0 -> position 1.
  // Plus the direct term g*m_t = 1 at every position: gc = [1+1, 1+1, 1+0].
  EXPECT_TRUE(torch::allclose(gc, torch::tensor({2.0, 2.0, 1.0}, torch::kDouble))) << gc;
}

TEST(CummaxGate, StateCarriesTheRunningMax) {
  torch::manual_seed(3);
  auto y = torch::randn({2, 12, 3 * 9}, torch::kDouble);
  auto alphas = torch::rand({5}, torch::kDouble);
  auto whole = cummax_gate(y, alphas, {}, GateImpl::kFused);
  auto p1 = cummax_gate(y.narrow(1, 0, 5), alphas, {}, GateImpl::kFused);
  auto p2 = cummax_gate(y.narrow(1, 5, 7), alphas, p1.state, GateImpl::kFused);
  EXPECT_TRUE(torch::allclose(torch::cat({p1.out, p2.out}, 1), whole.out));
  EXPECT_TRUE(torch::equal(p2.state, whole.state));
}

TEST(CummaxGate, FloatAndBFloat16FollowDouble) {
  torch::manual_seed(11);
  auto y = torch::randn({2, 40, 3 * 24}, torch::kDouble);
  auto alphas = torch::rand({5}, torch::kDouble);
  auto ref = cummax_gate(y, alphas, {}, GateImpl::kComposite).out;
  auto f32 = cummax_gate(y.to(torch::kFloat), alphas.to(torch::kFloat), {}, GateImpl::kFused).out;
  EXPECT_TRUE(torch::allclose(f32.to(torch::kDouble), ref, 1e-5, 1e-5));
  auto bf =
      cummax_gate(y.to(torch::kBFloat16), alphas.to(torch::kBFloat16), {}, GateImpl::kFused).out;
  auto ref_bf =
      cummax_gate(y.to(torch::kBFloat16).to(torch::kDouble),
                  alphas.to(torch::kBFloat16).to(torch::kDouble), {}, GateImpl::kComposite)
          .out;
  EXPECT_TRUE(torch::allclose(bf.to(torch::kDouble), ref_bf, 2e-2, 2e-2));
}

TEST(CummaxGate, RejectsBadShapes) {
  auto alphas = torch::rand({5});
  EXPECT_THROW(cummax_gate(torch::rand({2, 3, 7}), alphas), c10::Error);  // 7 not 3d
  EXPECT_THROW(cummax_gate(torch::rand({2, 3, 6}), torch::rand({4})), c10::Error);
  EXPECT_THROW(cummax_gate(torch::rand({2, 3, 6}), alphas, torch::rand({2, 3})), c10::Error);
  EXPECT_THROW(parse_gate_impl("fastest"), std::exception);
}

}  // namespace
}  // namespace samout::ops
