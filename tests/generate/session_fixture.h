// Helpers shared by the generation tests (session_test.cpp and generation_test.cpp on the CPU,
// generate_cuda_test.cpp on the GPU): a small model whose every parameter matters, and a closeness
// check scaled to the values.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "samout/model/config.h"
#include "samout/model/samout.h"

namespace samout::model {

// A small model whose alphas differ from 0.5 so every term of the gate matters (and, with
// odd_layer_norm, whose LayerNorm affine parameters differ from 1 and 0 too). The same seed gives
// the same weights.
inline SamOut tiny_model(uint64_t seed, int64_t vocab_size = 97, int64_t hidden = 40,
                         int64_t layers = 3, bool odd_layer_norm = false) {
  torch::manual_seed(seed);
  ModelConfig cfg;
  cfg.vocab_size = vocab_size;
  cfg.hidden = hidden;
  cfg.layers = layers;
  cfg.heads = 4;
  cfg.pad_id = 3;
  SamOut m(cfg);
  torch::NoGradGuard ng;
  for (auto& p : m->named_parameters()) {
    if (p.key().find("alpha") != std::string::npos) p.value().uniform_(-1, 1);
    if (odd_layer_norm && p.key().find("layer_norm") != std::string::npos)
      p.value().uniform_(0.5, 1.5);
  }
  return m;
}

// max |got - want| <= rtol * max(1, max |want|); got may live on another device than want.
inline void expect_close(const torch::Tensor& got, const torch::Tensor& want,
                         const std::string& what, double rtol = 1e-5) {
  const auto g = got.detach().to(want.device());
  const double err = (g - want).abs().max().item<double>();
  const double scale = want.abs().max().item<double>();
  EXPECT_LE(err, rtol * std::max(1.0, scale)) << what << ": max abs error " << err;
}

}  // namespace samout::model
