// SamOut in C++ against the PyTorch reference (goldens), state carrying, and bad input.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "common/h5_tensor.h"
#include "samout/common/error.h"
#include "samout/model/samout.h"

namespace samout::model {
namespace {

// Max |a - b| must stay within rel * max|b|: the tolerance the foundation issue sets for fp32 parity.
void expect_close(const torch::Tensor& got, const torch::Tensor& want, double rel,
                  const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const double scale = want.abs().max().item<double>();
  const double diff = (got - want).abs().max().item<double>();
  EXPECT_LE(diff, rel * std::max(scale, 1e-30))
      << what << ": max abs diff " << diff << ", max magnitude " << scale;
}

ModelConfig make_config(int64_t V, int64_t d, int64_t L, int64_t h, int64_t pad = -1) {
  ModelConfig cfg;
  cfg.vocab_size = V;
  cfg.hidden = d;
  cfg.layers = L;
  cfg.heads = h;
  cfg.pad_id = pad;
  return cfg;
}

// The seed's loss: mean next-token cross entropy over (B, T), targets equal to pad ignored.
torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets, int64_t pad_id) {
  namespace F = torch::nn::functional;
  return F::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}),
                          F::CrossEntropyFuncOptions().ignore_index(pad_id >= 0 ? pad_id : -100));
}

// Regenerate with: .venv/bin/python tests/python/make_goldens.py   (see that file's docstring)
const char* kGolden = SAMOUT_GOLDEN_DIR "/parity_tiny.h5";

ModelConfig golden_config(const testing::H5File& f, ops::GateImpl gate) {
  ModelConfig cfg;
  cfg.vocab_size = f.attr_int("vocab_size");
  cfg.hidden = f.attr_int("hidden");
  cfg.layers = f.attr_int("layers");
  cfg.heads = f.attr_int("heads");
  cfg.pad_id = f.attr_int("pad_id");
  cfg.gate = gate;
  return cfg;
}

SamOut load_golden_model(const testing::H5File& f, ops::GateImpl gate) {
  SamOut model(golden_config(f, gate));
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) {
    auto w = f.read("params/" + p.key(), torch::kFloat32);
    EXPECT_EQ(w.sizes(), p.value().sizes()) << p.key();
    p.value().copy_(w);
  }
  return model;
}

class Parity : public ::testing::TestWithParam<ops::GateImpl> {};

TEST_P(Parity, LogitsLossAndGradientsMatchPyTorchReference) {
  testing::H5File f(kGolden);
  SamOut model = load_golden_model(f, GetParam());
  auto tokens = f.read("tokens", torch::kInt64);
  auto targets = f.read("targets", torch::kInt64);

  auto logits = model->forward(tokens);
  auto loss = lm_loss(logits, targets, model->config().pad_id);
  loss.backward();

  expect_close(logits, f.read("logits", torch::kFloat32), 1e-5, "logits");
  expect_close(loss, f.read("loss", torch::kFloat32), 1e-5, "loss");
  int64_t compared = 0;
  for (const auto& p : model->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    expect_close(p.value().grad(), f.read("grads/" + p.key(), torch::kFloat32), 1e-5,
                 "grad of " + p.key());
    ++compared;
  }
  EXPECT_EQ(compared, 2 + 15 * model->config().layers);  // every parameter of the seed's model
}

TEST_P(Parity, PiecesWithCarriedStateMatchPyTorchReference) {
  testing::H5File f(kGolden);
  SamOut model = load_golden_model(f, GetParam());
  auto tokens = f.read("tokens", torch::kInt64);
  torch::NoGradGuard no_grad;
  ModelState state;
  std::vector<torch::Tensor> pieces;
  const int64_t T = tokens.size(1);
  for (auto [lo, hi] : {std::pair<int64_t, int64_t>{0, 3}, {3, 7}, {7, T}})
    pieces.push_back(model->forward(tokens.slice(1, lo, hi), &state));
  expect_close(torch::cat(pieces, 1), f.read("logits_pieces", torch::kFloat32), 1e-5, "pieces");
}

INSTANTIATE_TEST_SUITE_P(Gate, Parity,
                         ::testing::Values(ops::GateImpl::kFused, ops::GateImpl::kComposite),
                         [](const auto& info) { return ops::to_string(info.param); });

TEST(Model, ParameterNamesAreTheSeeds) {
  ModelConfig cfg = make_config(50, 16, 2, 4);
  SamOut model(cfg);
  auto params = model->named_parameters();
  for (const char* name :
       {"em.weight", "head.weight", "decoder_layers.1.self_attention.combined.weight",
        "decoder_layers.1.self_attention.alpha5", "decoder_layers.0.ffn.gate.bias",
        "decoder_layers.0.layer_norm.weight", "decoder_layers.1.alpha"})
    EXPECT_NE(params.find(name), nullptr) << name;
  int64_t total = 0;
  for (const auto& p : params) total += p.value().numel();
  EXPECT_EQ(total, cfg.num_parameters());
}

TEST(Model, SeedConfigurationHas21266480Parameters) {
  ModelConfig cfg;  // the seed's: V=8460, d=512, L=8, h=8
  EXPECT_EQ(cfg.num_parameters(), 21266480);
}

TEST(Model, DefaultInitialisationIsPyTorchs) {
  ModelConfig cfg = make_config(40, 32, 1, 4, 5);
  SamOut model(cfg);
  EXPECT_EQ(model->em->weight[5].abs().sum().item<float>(), 0.0f);  // padding row zeroed
  EXPECT_NEAR(model->em->weight.std().item<float>(), 1.0f, 0.1f);   // N(0, 1)
  auto layer = model->decoder_layers[0]->as<DecoderLayer>();
  const float bound =
      1.0f / std::sqrt(32.0f);  // kaiming_uniform(a=sqrt(5)) gives U(+-1/sqrt(fan_in))
  EXPECT_LE(layer->self_attention->combined->weight.abs().max().item<float>(), bound);
  EXPECT_LE(layer->ffn->ffn1->bias.abs().max().item<float>(), bound);
  EXPECT_EQ(layer->self_attention->alpha3.item<float>(), 0.5f);
  EXPECT_EQ(layer->alpha.item<float>(), 0.5f);
  EXPECT_TRUE(layer->layer_norm->weight.eq(1).all().item<bool>());
}

TEST(State, WholeSequenceEqualsThreePiecesWithCarriedState) {
  torch::manual_seed(7);
  ModelConfig cfg = make_config(64, 40, 3, 5);
  SamOut model(cfg);
  torch::NoGradGuard no_grad;
  auto tokens = torch::randint(0, cfg.vocab_size, {2, 29}, torch::kLong);
  auto whole = model->forward(tokens);
  ModelState state;
  auto p1 = model->forward(tokens.slice(1, 0, 10), &state);
  auto p2 = model->forward(tokens.slice(1, 10, 11), &state);
  auto p3 = model->forward(tokens.slice(1, 11, 29), &state);
  ASSERT_EQ(state.size(), 3u);
  EXPECT_EQ(state[0].sizes(), (torch::IntArrayRef{2, 40}));
  expect_close(torch::cat({p1, p2, p3}, 1), whole, 1e-5, "pieces vs whole");
  // And the state really matters: dropping it changes the third piece.
  auto fresh = model->forward(tokens.slice(1, 11, 29));
  EXPECT_GT((fresh - p3).abs().max().item<double>(), 1e-3);
}

// ---- Bad input: an exception whose message names the value ----------------------------------------

template <typename F>
std::string usage_error_of(F&& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  }
  return "(no UsageError)";
}

TEST(BadInput, HiddenNotDivisibleByHeads) {
  ModelConfig cfg = make_config(50, 30, 1, 4);
  const auto msg = usage_error_of([&] { SamOut m(cfg); });
  EXPECT_NE(msg.find("30"), std::string::npos) << msg;
  EXPECT_NE(msg.find("heads 4"), std::string::npos) << msg;
}

TEST(BadInput, TokenIdAtOrAboveVocab) {
  ModelConfig cfg = make_config(50, 16, 1, 2);
  SamOut model(cfg);
  auto tokens = torch::tensor({{1, 2, 50}}, torch::kLong);
  const auto msg = usage_error_of([&] { model->forward(tokens); });
  EXPECT_NE(msg.find("token id 50"), std::string::npos) << msg;
  EXPECT_NE(msg.find("vocab size 50"), std::string::npos) << msg;
  auto negative = torch::tensor({{1, -4}}, torch::kLong);
  EXPECT_NE(usage_error_of([&] { model->forward(negative); }).find("-4"), std::string::npos);
}

TEST(BadInput, EmptyInput) {
  ModelConfig cfg = make_config(50, 16, 1, 2);
  SamOut model(cfg);
  const auto msg = usage_error_of([&] { model->forward(torch::empty({2, 0}, torch::kLong)); });
  EXPECT_NE(msg.find("empty input"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(2, 0)"), std::string::npos) << msg;
}

TEST(BadInput, FloatTokens) {
  ModelConfig cfg = make_config(50, 16, 1, 2);
  SamOut model(cfg);
  const auto msg = usage_error_of([&] { model->forward(torch::zeros({1, 3})); });
  EXPECT_NE(msg.find("Float"), std::string::npos) << msg;
}

}  // namespace
}  // namespace samout::model
