// gated_ffn's fused fp32 CPU path against its composite, in value and in all seven gradients.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "samout/ops/gated_ffn.h"

namespace samout::ops {
namespace {

struct Params {
  torch::Tensor w1, b1, wg, bg, w2, b2;
  std::vector<torch::Tensor> all() const { return {w1, b1, wg, bg, w2, b2}; }
};

Params make_params(int64_t d, int64_t f, int64_t d_out, torch::Dtype dtype) {
  auto r = [&](std::vector<int64_t> s) {
    return (0.3 * torch::randn(s)).to(dtype).requires_grad_();
  };
  return {r({f, d}), r({f}), r({f, d}), r({f}), r({d_out, f}), r({d_out})};
}

double rel_err(const torch::Tensor& got, const torch::Tensor& want) {
  const auto w = want.to(torch::kDouble);
  const double scale = std::max(1e-3, w.abs().max().item<double>());
  return (got.to(torch::kDouble) - w).abs().max().item<double>() / scale;
}

// Runs forward + backward with a random upstream gradient; returns {out, dy, dW1, db1, ...}.
std::vector<torch::Tensor> run(bool fused, const torch::Tensor& y0, const Params& p,
                               const torch::Tensor& up, bool y_grad = true) {
  auto y = y0.detach().clone().requires_grad_(y_grad);
  Params q;
  auto c = [](const torch::Tensor& t) { return t.detach().clone().requires_grad_(); };
  q = {c(p.w1), c(p.b1), c(p.wg), c(p.bg), c(p.w2), c(p.b2)};
  auto out = fused ? gated_ffn(y, q.w1, q.b1, q.wg, q.bg, q.w2, q.b2)
                   : gated_ffn_composite(y, q.w1, q.b1, q.wg, q.bg, q.w2, q.b2);
  if (fused) EXPECT_NE(out.grad_fn()->name().find("GatedFfnFunction"), std::string::npos);
  out.backward(up);
  std::vector<torch::Tensor> r{out.detach(), y.grad()};
  for (auto& t : q.all()) r.push_back(t.grad());
  return r;
}

TEST(GatedFfn, FusedMatchesCompositeInDouble) {
  torch::manual_seed(0);
  for (auto [rows, d, f] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 5, 3}, {7, 33, 17}, {50, 64, 64}, {196, 128, 96}}) {
    const auto p = make_params(d, f, d, torch::kFloat32);
    const auto y = torch::randn({2, rows, d});
    ASSERT_TRUE(gated_ffn_uses_fused(y, p.w1, p.w2));
    const auto up = torch::randn({2, rows, d});
    const auto got = run(true, y, p, up);
    // The reference: the composite in double.
    auto dp = p;
    for (auto* t : {&dp.w1, &dp.b1, &dp.wg, &dp.bg, &dp.w2, &dp.b2}) *t = t->to(torch::kDouble);
    ASSERT_FALSE(gated_ffn_uses_fused(y.to(torch::kDouble), dp.w1, dp.w2));
    const auto want = run(false, y.to(torch::kDouble), dp, up.to(torch::kDouble));
    const char* names[] = {"out", "dy", "dW1", "db1", "dWg", "dbg", "dW2", "db2"};
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_TRUE(got[i].defined()) << names[i];
      EXPECT_EQ(got[i].sizes(), want[i].sizes()) << names[i];
      EXPECT_LT(rel_err(got[i], want[i]), 2e-5) << names[i] << " rows=" << rows << " d=" << d;
    }
  }
}

// Half the gate units are off (g < 0) in a random draw; make every unit off for some rows and on for
// others, so a wrong mask in either direction shows.
TEST(GatedFfn, GateMaskBothWays) {
  torch::manual_seed(1);
  const int64_t d = 16, f = 8;
  auto p = make_params(d, f, d, torch::kFloat32);
  torch::NoGradGuard ng;
  p.bg.copy_(torch::full({f}, 0.0f));
  p.wg.copy_(torch::ones({f, d}));
  torch::GradMode::set_enabled(true);
  auto y = torch::cat({torch::full({3, d}, 1.0f), torch::full({3, d}, -1.0f)}, 0);  // g = +16 / -16
  const auto up = torch::randn({6, d});
  const auto got = run(true, y, p, up);
  const auto want = run(false, y, p, up);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_LT(rel_err(got[i], want[i]), 1e-5) << i;
  EXPECT_EQ(got[0].narrow(0, 3, 3).sub(p.b2.detach()).abs().max().item<float>(), 0.0f);  // h = 0
}

TEST(GatedFfn, SameAtOneAndTwoThreads) {
  const int saved = at::get_num_threads();
  torch::manual_seed(2);
  const auto p = make_params(96, 80, 96, torch::kFloat32);
  const auto y = torch::randn({3, 37, 96}), up = torch::randn({3, 37, 96});
  std::vector<std::vector<torch::Tensor>> r;
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    r.push_back(run(true, y, p, up));
  }
  at::set_num_threads(saved);
  for (size_t i = 0; i < r[0].size(); ++i) EXPECT_TRUE(torch::equal(r[0][i], r[1][i])) << i;
}

// y without a gradient (the backward skips dL/dy), and the paths without autograd (the composite).
TEST(GatedFfn, WithoutGradOfYAndWithoutAutograd) {
  torch::manual_seed(3);
  const auto p = make_params(12, 10, 12, torch::kFloat32);
  const auto y = torch::randn({5, 12}), up = torch::randn({5, 12});
  const auto got = run(true, y, p, up, false), want = run(false, y, p, up, false);
  EXPECT_FALSE(got[1].defined());
  for (size_t i : {0, 2, 3, 4, 5, 6, 7}) EXPECT_LT(rel_err(got[i], want[i]), 1e-5) << i;
  {
    torch::NoGradGuard ng;
    EXPECT_LT(rel_err(gated_ffn(y, p.w1, p.b1, p.wg, p.bg, p.w2, p.b2), want[0]), 1e-6);
  }
  c10::InferenceMode im;
  const auto yi = y.clone();  // an inference tensor: the dispatcher skips autograd
  EXPECT_LT(rel_err(gated_ffn(yi, p.w1, p.b1, p.wg, p.bg, p.w2, p.b2), want[0]), 1e-6);
}

TEST(GatedFfn, BadShapesAreErrors) {
  const auto p = make_params(8, 6, 8, torch::kFloat32);
  const auto y = torch::randn({4, 8});
  EXPECT_THROW(gated_ffn(y, p.w1, p.b1, p.wg.narrow(0, 0, 5), p.bg, p.w2, p.b2), c10::Error);
  EXPECT_THROW(gated_ffn(y, p.w1, p.b1, p.wg, p.bg, p.w2, p.b2.narrow(0, 0, 7)), c10::Error);
}

}  // namespace
}  // namespace samout::ops
