// Tests of samout/model/session.h on the CPU: the carried state (stepwise logits == whole-sequence
// logits), prompts of different lengths batched by their states, odd sizes, and bad ids. The CUDA
// session (CUDA graph, GPU against CPU) is tested in generate_cuda_test.cpp (ctest label gpu).
#include "samout/model/session.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "samout/common/error.h"
#include "session_fixture.h"

namespace samout::model {
namespace {

TEST(Session, StepwiseLogitsEqualWholeSequence) {
  auto model = tiny_model(1);
  auto tokens = torch::randint(0, 97, {2, 24}, torch::kLong);
  torch::Tensor full;
  {
    torch::NoGradGuard ng;
    full = model->forward(tokens);  // (B, T, V), no state
  }
  Session s(model);
  const int64_t P = 6;
  expect_close(s.prefill(tokens.narrow(1, 0, P)), full.select(1, P - 1), "prefill");
  EXPECT_EQ(s.position(), P);
  for (int64_t t = P; t < 24; ++t)
    expect_close(s.step(tokens.select(1, t)), full.select(1, t), "step " + std::to_string(t));
  EXPECT_EQ(s.position(), 24);
  // A new prefill drops the old state.
  expect_close(s.prefill(tokens.narrow(1, 0, 3)), full.select(1, 2), "second prefill");
}

TEST(Session, PromptsOfDifferentLengthsBatchedByTheirStates) {
  auto model = tiny_model(2);
  auto a = torch::randint(0, 97, {1, 9}, torch::kLong),
       b = torch::randint(0, 97, {1, 4}, torch::kLong);
  auto next = torch::randint(0, 97, {2, 5}, torch::kLong);
  torch::Tensor fa, fb;
  {
    torch::NoGradGuard ng;
    fa = model->forward(torch::cat({a, next.narrow(0, 0, 1)}, 1));
    fb = model->forward(torch::cat({b, next.narrow(0, 1, 1)}, 1));
  }
  Session s(model);
  s.prefill(a);
  auto sa = s.state();
  s.prefill(b);
  auto sb = s.state();
  ModelState stacked;
  for (size_t l = 0; l < sa.size(); ++l) stacked.push_back(torch::cat({sa[l], sb[l]}, 0));
  s.set_state(stacked);
  for (int64_t t = 0; t < 5; ++t) {
    auto logits = s.step(next.select(1, t));  // (2, V)
    expect_close(logits[0], fa[0][9 + t], "row 0 step " + std::to_string(t));
    expect_close(logits[1], fb[0][4 + t], "row 1 step " + std::to_string(t));
  }
}

// On the CPU a step's products (T = 1, B <= ops::kGemvMaxRows rows) go to the GEMV. Odd sizes:
// d = 36 leaves a K % 8 tail, 3d = 108 and V = 1001 leave ragged thread chunks, and V * d is big
// enough for the head's product to be split across threads. B = 9 takes at::linear.
TEST(Session, StepEqualsWholeSequenceAtOddSizes) {
  auto model = tiny_model(7, /*vocab_size=*/1001, /*hidden=*/36, /*layers=*/2,
                          /*odd_layer_norm=*/true);
  const auto& cfg = model->config();
  for (int64_t B : {1, 3, 9}) {
    auto tokens = torch::randint(0, cfg.vocab_size, {B, 12}, torch::kLong);
    torch::Tensor full;
    {
      torch::NoGradGuard ng;
      full = model->forward(tokens);
    }
    auto close = [&](const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
      const double err = (got - want).abs().max().item<double>();
      const double scale = std::max(1.0, want.abs().max().item<double>());
      EXPECT_LE(err, 1e-4 * scale) << "B=" << B << " " << what << ": max abs error " << err;
    };
    Session s(model);
    // A one-token prefill starts from no state at all.
    close(s.prefill(tokens.narrow(1, 0, 1)), full.select(1, 0), "prefill of 1");
    for (int64_t t = 1; t < 12; ++t)
      close(s.step(tokens.select(1, t)), full.select(1, t), "step " + std::to_string(t));
    // The carried state is the running max of c, as the modules compute it.
    ModelState whole;
    {
      torch::NoGradGuard ng;
      model->forward(tokens, &whole);
    }
    for (size_t l = 0; l < whole.size(); ++l)
      close(s.state()[l], whole[l], "state of layer " + std::to_string(l));
    // A step leaves the states a caller took before it as they were.
    const auto before = s.state()[0].clone();
    const auto held = s.state()[0];
    s.step(tokens.select(1, 0));
    EXPECT_TRUE(torch::equal(held, before)) << "B=" << B;
  }
}

TEST(Session, StepRejectsOutOfRangeToken) {
  Session s(tiny_model(5));
  s.prefill(torch::tensor({{1, 2}}, torch::kLong));
  EXPECT_THROW(s.step(torch::tensor({97}, torch::kLong)), c10::Error);
  EXPECT_THROW(s.step(torch::tensor({-1}, torch::kLong)), c10::Error);
}

TEST(Session, RejectsOutOfRangePrompt) {
  Session s(tiny_model(3));
  EXPECT_THROW(s.prefill(torch::tensor({{1, 97}}, torch::kLong)), UsageError);
  EXPECT_THROW(s.prefill(torch::tensor({{-1, 2}}, torch::kLong)), UsageError);
  EXPECT_THROW(s.prefill(torch::zeros({1, 0}, torch::kLong)), UsageError);
}

}  // namespace
}  // namespace samout::model
