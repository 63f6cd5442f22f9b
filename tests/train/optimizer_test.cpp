// FlatAdam (train/optimizer.h) against libtorch's own torch::optim::Adam / AdamW.
#include "samout/train/optimizer.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

namespace samout::train {
namespace {

// Runs `steps` updates of FlatAdam and of torch's optimizer from the same start, with the same
// gradients (fresh random ones each step), and returns the largest parameter difference. The
// weights are O(1) and move by ~lr per step, so float rounding alone stays near 1e-7.
double compare_with_torch(bool decoupled, double wd, int64_t n, int steps) {
  torch::manual_seed(7);
  auto start = torch::randn({n});
  auto flat = start.clone();
  auto grads = torch::zeros({n});
  AdamOptions opts;
  opts.weight_decay = wd;
  opts.decoupled = decoupled;
  FlatAdam ours(flat, grads, 0, n, opts);

  auto ref = start.clone().requires_grad_(true);
  std::unique_ptr<torch::optim::Optimizer> theirs;
  if (decoupled)
    theirs = std::make_unique<torch::optim::AdamW>(
        std::vector<torch::Tensor>{ref}, torch::optim::AdamWOptions(1e-2).weight_decay(wd));
  else
    theirs = std::make_unique<torch::optim::Adam>(std::vector<torch::Tensor>{ref},
                                                  torch::optim::AdamOptions(1e-2).weight_decay(wd));
  for (int s = 0; s < steps; ++s) {
    auto g = torch::randn({n});
    grads.copy_(g);
    ours.step(1e-2);
    ref.mutable_grad() = g.clone();
    theirs->step();
  }
  EXPECT_EQ(ours.steps_taken(), steps);
  EXPECT_GT((flat - start).abs().mean().item<double>(), 5e-3);  // the weights did move
  return (flat - ref.detach()).abs().max().item<double>();
}

TEST(FlatAdam, MatchesTorchAdam) { EXPECT_LT(compare_with_torch(false, 0.0, 1000, 6), 1e-6); }
TEST(FlatAdam, MatchesTorchAdamWithL2) { EXPECT_LT(compare_with_torch(false, 0.1, 1000, 6), 1e-6); }
TEST(FlatAdam, MatchesTorchAdamW) { EXPECT_LT(compare_with_torch(true, 0.1, 1000, 6), 1e-6); }

// The update moves the weights: a broken kernel that wrote nothing would fail here.
TEST(FlatAdam, FirstStepMovesEachWeightByLr) {
  torch::manual_seed(11);
  auto p = torch::zeros({100}), g = torch::randn({100});
  FlatAdam adam(p, g, 0, 100, AdamOptions{});
  adam.step(1e-3);
  // Step 1 of Adam: m/bc1 = g, sqrt(v/bc2) = |g|, so each weight moves by lr * sign(g) (up to
  // eps / |g|, which is below 1e-4 for these gradients).
  ASSERT_GT(g.abs().min().item<float>(), 1e-4f);
  EXPECT_TRUE(torch::allclose(p, -1e-3 * g.sign(), 1e-4, 0.0));
}

// A step with found_inf = 1 (a non-finite gradient norm) changes nothing, the step count included:
// the next real step is bitwise the one an uninterrupted run takes.
TEST(FlatAdam, FoundInfSkipsTheStep) {
  torch::manual_seed(5);
  auto start = torch::randn({300});
  auto g1 = torch::randn({300}), g2 = torch::randn({300});
  auto run = [&](bool with_skip) {
    auto p = start.clone(), g = torch::zeros({300});
    FlatAdam adam(p, g, 0, 300, AdamOptions{});
    g.copy_(g1);
    adam.step(1e-2, torch::zeros({}));
    if (with_skip) {
      const auto m = adam.exp_avg().clone(), v = adam.exp_avg_sq().clone(), before = p.clone();
      g.fill_(std::numeric_limits<float>::quiet_NaN());
      adam.step(1e-2, torch::ones({}));
      EXPECT_TRUE(torch::equal(p, before));
      EXPECT_TRUE(torch::equal(adam.exp_avg(), m));
      EXPECT_TRUE(torch::equal(adam.exp_avg_sq(), v));
      EXPECT_EQ(adam.steps_taken(), 1);
    }
    g.copy_(g2);
    adam.step(1e-2, torch::zeros({}));
    EXPECT_EQ(adam.steps_taken(), 2);
    return p;
  };
  EXPECT_TRUE(torch::equal(run(true), run(false)));
}

TEST(FlatAdam, UpdatesOnlyItsRange) {
  auto p = torch::randn({500}), g = torch::randn({500});
  auto before = p.clone();
  FlatAdam adam(p, g, 100, 321, AdamOptions{});
  adam.step(1e-2);
  EXPECT_TRUE(torch::equal(p.narrow(0, 0, 100), before.narrow(0, 0, 100)));
  EXPECT_TRUE(torch::equal(p.narrow(0, 321, 179), before.narrow(0, 321, 179)));
  EXPECT_FALSE(torch::equal(p.narrow(0, 100, 221), before.narrow(0, 100, 221)));
  EXPECT_EQ(adam.exp_avg().numel(), 221);
}

TEST(FlatAdam, SameResultAtOneAndTwoThreads) {
  const int saved = at::get_num_threads();
  std::vector<torch::Tensor> out;
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    torch::manual_seed(3);
    auto p = torch::randn({100003}), g = torch::randn({100003});
    FlatAdam adam(p, g, 0, p.numel(), AdamOptions{});
    for (int s = 0; s < 3; ++s) adam.step(1e-3);
    out.push_back(p);
  }
  at::set_num_threads(saved);
  EXPECT_TRUE(torch::equal(out[0], out[1]));
}

}  // namespace
}  // namespace samout::train
