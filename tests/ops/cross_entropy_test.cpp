// cross_entropy_sum against torch's cross_entropy(reduction=sum) in double: value and gradient,
// with ignored rows, an upstream gradient other than 1, and without autograd.
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
  const auto want = F::cross_entropy(logits, targets, F::CrossEntropyFuncOptions().reduction(torch::kSum));
  EXPECT_NEAR(got.item<double>(), want.item<double>(), 1e-5);
  EXPECT_THROW(cross_entropy_sum(logits, targets.narrow(0, 0, 4)), c10::Error);
  EXPECT_THROW(cross_entropy_sum(logits, logits.select(1, 0)), c10::Error);
}

}  // namespace
}  // namespace samout::ops
