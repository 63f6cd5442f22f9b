// cross_entropy_sum against torch's cross_entropy(reduction=sum) in double: value and gradient,
// with ignored rows, an upstream gradient other than 1, and without autograd; the dispatcher's
// other paths (inference mode, meta tensors, the forward op); then the fused fp32 CPU kernel alone.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "samout/ops/cross_entropy.h"

namespace samout::ops {
namespace {

namespace F = torch::nn::functional;

double rel_err(const torch::Tensor& got, const torch::Tensor& want) {
  const auto w = want.to(torch::kDouble);
  const double scale = std::max(1.0, w.abs().max().item<double>());
  return (got.to(torch::kDouble) - w).abs().max().item<double>() / scale;
}

TEST(CrossEntropySum, ValueAndGradientMatchTorch) {
  torch::manual_seed(0);
  for (int64_t ignore : {int64_t{-100}, int64_t{3}}) {
    const int64_t N = 37, V = 130;
    auto logits = (4 * torch::randn({N, V})).requires_grad_();
    auto targets = torch::randint(0, V, {N}, torch::kLong);
    targets.index_put_({torch::arange(0, N, 5)}, 3);  // some rows hit the ignored id when it is 3
    auto loss = cross_entropy_sum(logits, targets, ignore);
    (loss * 0.25).backward();

    auto ld = logits.detach().to(torch::kDouble).requires_grad_();
    auto want = F::cross_entropy(
        ld, targets, F::CrossEntropyFuncOptions().ignore_index(ignore).reduction(torch::kSum));
    (want * 0.25).backward();
    EXPECT_NEAR(loss.item<double>(), want.item<double>(), 1e-5 * std::abs(want.item<double>()));
    EXPECT_LT(rel_err(logits.grad(), ld.grad()), 1e-6);
    if (ignore == 3) {  // ignored rows get exactly no gradient
      EXPECT_EQ(logits.grad().index({torch::arange(0, N, 5)}).abs().max().item<float>(), 0.0f);
    }
  }
}

TEST(CrossEntropySum, SecondBackwardIsRefused) {
  auto logits = torch::randn({4, 9}, torch::requires_grad());
  auto loss = cross_entropy_sum(logits, torch::randint(0, 9, {4}, torch::kLong));
  loss.backward({}, /*retain_graph=*/true);
  EXPECT_THROW(loss.backward(), c10::Error);
}

TEST(CrossEntropySum, NoGradAndBadShapes) {
  torch::manual_seed(1);
  const auto logits = torch::randn({5, 11});
  const auto targets = torch::randint(0, 11, {5}, torch::kLong);
  torch::Tensor got;
  {
    torch::NoGradGuard ng;
    got = cross_entropy_sum(logits, targets);
  }
  const auto want =
      F::cross_entropy(logits, targets, F::CrossEntropyFuncOptions().reduction(torch::kSum));
  EXPECT_NEAR(got.item<double>(), want.item<double>(), 1e-5);
  EXPECT_THROW(cross_entropy_sum(logits, targets.narrow(0, 0, 4)), c10::Error);
  EXPECT_THROW(cross_entropy_sum(logits, logits.select(1, 0)), c10::Error);
}

// Autograd out of the dispatch: inference mode takes the CompositeExplicitAutograd kernel, meta
// tensors its Meta kernel; the forward op's gradient is the one backward scales.
TEST(CrossEntropySum, InferenceModeMetaAndForwardOp) {
  torch::manual_seed(3);
  const auto logits = torch::randn({6, 13});
  const auto targets = torch::randint(0, 13, {6}, torch::kLong);
  const auto want = cross_entropy_sum(logits, targets);
  {
    c10::InferenceMode guard;
    EXPECT_TRUE(torch::equal(cross_entropy_sum(logits, targets), want));
  }
  const auto meta =
      cross_entropy_sum(logits.to(torch::kMeta).requires_grad_(), targets.to(torch::kMeta));
  EXPECT_TRUE(meta.is_meta());
  EXPECT_EQ(meta.dim(), 0);
  auto [loss, grad] = cross_entropy_sum_forward(logits, targets, -100, true);
  EXPECT_TRUE(torch::equal(loss, want));
  auto lg = logits.clone().requires_grad_();
  cross_entropy_sum(lg, targets).backward();
  EXPECT_TRUE(torch::equal(grad, lg.grad()));
  EXPECT_EQ(std::get<1>(cross_entropy_sum_forward(logits, targets, -100, false)).numel(), 0);
  auto [mloss, mgrad] =
      cross_entropy_sum_forward(logits.to(torch::kMeta), targets.to(torch::kMeta), -100, true);
  EXPECT_EQ(mgrad.sizes(), logits.sizes());
}

// The fused fp32 CPU kernel, vector and scalar rows, against torch in double: odd V (vector tails),
// the seed's V, ignored rows, logits large enough that most exps underflow.
TEST(CrossEntropyFused, MatchesTorchInDouble) {
  torch::manual_seed(2);
  for (bool simd : {true, false})
    for (int64_t V : {1, 7, 8, 17, 130, 8460})
      for (double scale : {1.0, 30.0}) {
        const int64_t N = 23;
        auto logits = (scale * torch::randn({N, V})).to(torch::kFloat32);
        ASSERT_TRUE(cross_entropy_uses_fused(logits));
        auto targets = torch::randint(0, V, {N}, torch::kLong);
        targets.index_put_({torch::arange(0, N, 4)}, -100);
        torch::Tensor row_loss, grad;
        cross_entropy_forward_cpu(logits, targets, -100, row_loss, &grad, simd);

        auto ld = logits.to(torch::kDouble).requires_grad_();
        auto want =
            F::cross_entropy(ld, targets, F::CrossEntropyFuncOptions().reduction(torch::kNone));
        want.sum().backward();
        const std::string where = "V=" + std::to_string(V) + " scale=" + std::to_string(scale) +
                                  " simd=" + std::to_string(simd);
        EXPECT_LT(rel_err(row_loss, want), 2e-6) << where;
        EXPECT_LT(rel_err(grad, ld.grad()), 1e-6) << where;
        EXPECT_EQ(grad.index({torch::arange(0, N, 4)}).abs().max().item<float>(), 0.0f) << where;
      }
}

TEST(CrossEntropyFused, AutogradPathMatchesComposite) {
  torch::manual_seed(4);
  auto logits = torch::randn({64, 301}, torch::requires_grad());
  auto targets = torch::randint(0, 301, {64}, torch::kLong);
  auto loss = cross_entropy_sum(logits, targets);  // fused: contiguous fp32
  (loss * 0.5).backward();
  // A transposed copy is not contiguous, so the same numbers take the composite path.
  auto lt = logits.detach().t().contiguous().t().requires_grad_();
  ASSERT_FALSE(cross_entropy_uses_fused(lt));
  auto want = cross_entropy_sum(lt, targets);
  (want * 0.5).backward();
  EXPECT_NEAR(loss.item<double>(), want.item<double>(), 1e-5 * want.item<double>());
  EXPECT_LT(rel_err(logits.grad(), lt.grad()), 1e-6);
}

TEST(CrossEntropyFused, NonFiniteLogits) {
  auto logits = torch::randn({4, 19});
  logits.index_put_({0, 3}, std::numeric_limits<float>::quiet_NaN());
  logits.index_put_({1, 5}, std::numeric_limits<float>::infinity());
  logits.index_put_({2, 7}, -std::numeric_limits<float>::infinity());
  auto targets = torch::tensor({1, 2, 3, 4}, torch::kLong);
  for (bool simd : {true, false}) {
    torch::Tensor row_loss, grad;
    cross_entropy_forward_cpu(logits, targets, -100, row_loss, &grad, simd);
    EXPECT_TRUE(std::isnan(row_loss[0].item<float>()));     // NaN propagates, as in torch
    EXPECT_TRUE(std::isnan(row_loss[1].item<float>()));     // +inf: inf - inf
    EXPECT_TRUE(std::isfinite(row_loss[2].item<float>()));  // -inf is just a zero probability
    EXPECT_LT(grad[2][7].abs().item<float>(), 1e-30f);
    EXPECT_TRUE(grad[0].isnan().all().item<bool>());
  }
}

TEST(CrossEntropyFused, TargetOutOfRangeIsAnError) {
  auto logits = torch::randn({3, 10});
  torch::Tensor row_loss;
  EXPECT_THROW(cross_entropy_forward_cpu(logits, torch::tensor({1, 10, 2}, torch::kLong), -100,
                                         row_loss, nullptr),
               c10::Error);
  EXPECT_THROW(cross_entropy_sum(logits, torch::tensor({1, -2, 2}, torch::kLong)), c10::Error);
}

TEST(CrossEntropyFused, SameAtOneAndTwoThreads) {
  const int saved = at::get_num_threads();
  torch::manual_seed(5);
  auto logits = torch::randn({101, 999});
  auto targets = torch::randint(0, 999, {101}, torch::kLong);
  std::vector<torch::Tensor> loss, grad;
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    torch::Tensor l, g;
    cross_entropy_forward_cpu(logits, targets, -100, l, &g);
    loss.push_back(l);
    grad.push_back(g);
  }
  at::set_num_threads(saved);
  EXPECT_TRUE(torch::equal(loss[0], loss[1]));
  EXPECT_TRUE(torch::equal(grad[0], grad[1]));
}

}  // namespace
}  // namespace samout::ops
