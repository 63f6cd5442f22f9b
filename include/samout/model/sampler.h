// Sampling the next token from logits: repetition penalty, temperature, top-k, top-p, and a seeded
// draw (Hugging Face's order of the filters). Greedy (argmax) at temperature 0.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace samout::model {

struct SamplingConfig {
  double temperature = 1.0;  // 0 = greedy (argmax); otherwise logits / temperature
  int64_t top_k = 0;         // keep the k largest logits; 0 = all
  double top_p = 1.0;        // keep the smallest set of most likely tokens with mass >= p; 1 = all
  // CTRL / Hugging Face: a seen token's logit is divided by it when positive, else multiplied.
  double repetition_penalty = 1.0;  // 1 = off
  // Throws UsageError naming the offending value.
  void validate() const;
};

// The steps of sample(), in the order it applies them. logits (B, V) float, changed in place;
// filtered entries become -inf.
void apply_repetition_penalty(torch::Tensor& logits, const torch::Tensor& seen, double penalty);
void apply_top_k(torch::Tensor& logits, int64_t k);
// On softmax(logits); the most likely token always stays.
void apply_top_p(torch::Tensor& logits, double p);

class Sampler {
 public:
  // Draws use a CPU generator seeded with `seed`, so a seed gives the same tokens on any device
  // (up to the rounding of the logits themselves).
  Sampler(const SamplingConfig& cfg, uint64_t seed);

  // logits (B, V) on any device; seen (B, V) bool marking the tokens of each row's context (read
  // only when the repetition penalty is on; may be undefined otherwise). Returns (B,) int64 on the
  // logits' device. `logits` is not modified.
  torch::Tensor sample(const torch::Tensor& logits, const torch::Tensor& seen);
  const SamplingConfig& config() const { return cfg_; }

 private:
  SamplingConfig cfg_;
  torch::Generator gen_;
};

}  // namespace samout::model
