// Sampling (sampler.h): the filters and the seeded draw.
#include "samout/model/sampler.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <limits>
#include <string>

#include "samout/common/error.h"

namespace samout::model {

void SamplingConfig::validate() const {
  require(temperature >= 0 && std::isfinite(temperature),
          "temperature must be finite and >= 0 (0 = greedy), got " + std::to_string(temperature));
  require(top_k >= 0, "top_k must be >= 0 (0 = off), got " + std::to_string(top_k));
  require(top_p > 0 && top_p <= 1, "top_p must be in (0, 1], got " + std::to_string(top_p));
  require(repetition_penalty > 0 && std::isfinite(repetition_penalty),
          "repetition_penalty must be finite and > 0 (1 = off), got " +
              std::to_string(repetition_penalty));
}

void apply_repetition_penalty(torch::Tensor& logits, const torch::Tensor& seen, double penalty) {
  if (penalty == 1.0) return;
  TORCH_CHECK(
      seen.defined() && seen.sizes() == logits.sizes() && seen.scalar_type() == torch::kBool,
      "repetition penalty: seen must be a bool mask shaped like the logits ", logits.sizes());
  // CTRL (Keskar et al. 2019) as Hugging Face applies it: dividing a negative logit would raise it.
  auto penalized = torch::where(logits > 0, logits / penalty, logits * penalty);
  logits.copy_(torch::where(seen, penalized, logits));
}

void apply_top_k(torch::Tensor& logits, int64_t k) {
  const int64_t V = logits.size(-1);
  if (k <= 0 || k >= V) return;
  auto kth = std::get<0>(logits.topk(k, /*dim=*/-1)).narrow(-1, k - 1, 1);  // (B, 1)
  logits.masked_fill_(logits < kth, -std::numeric_limits<float>::infinity());
}

void apply_top_p(torch::Tensor& logits, double p) {
  if (p >= 1.0) return;
  auto [sorted, order] = logits.sort(/*dim=*/-1, /*descending=*/true);  // (B, V)
  auto probs = torch::softmax(sorted, /*dim=*/-1);
  // Mass of the tokens strictly more likely than each one: a token goes when that already reaches
  // p, which leaves the smallest prefix with mass >= p (the most likely token always stays).
  auto before = torch::cumsum(probs, /*dim=*/-1) - probs;
  auto drop = before >= p;
  drop.select(-1, 0).fill_(false);
  sorted.masked_fill_(drop, -std::numeric_limits<float>::infinity());
  logits.scatter_(/*dim=*/-1, order, sorted);  // back to vocabulary order
}

Sampler::Sampler(const SamplingConfig& cfg, uint64_t seed)
    : cfg_(cfg), gen_(at::make_generator<at::CPUGeneratorImpl>(seed)) {
  cfg_.validate();
}

torch::Tensor Sampler::sample(const torch::Tensor& logits_in, const torch::Tensor& seen) {
  TORCH_CHECK(logits_in.dim() == 2, "sample: logits must be (B, V), got ", logits_in.sizes());
  // A float32 copy: the caller's logits (maybe a CUDA graph's output buffer) stay as they are.
  auto logits = logits_in.to(torch::kFloat32, /*non_blocking=*/false, /*copy=*/true);
  apply_repetition_penalty(logits, seen, cfg_.repetition_penalty);
  if (cfg_.temperature == 0) return logits.argmax(/*dim=*/-1);
  logits.div_(cfg_.temperature);
  apply_top_k(logits, cfg_.top_k);
  apply_top_p(logits, cfg_.top_p);
  // The draw itself on the CPU generator: (B, V) floats is a few tens of KiB, and one seed then
  // means one output on every device.
  auto probs = torch::softmax(logits, /*dim=*/-1).to(torch::kCPU);
  auto ids = torch::multinomial(probs, /*num_samples=*/1, /*replacement=*/false, gen_).squeeze(1);
  return ids.to(logits_in.device());
}

}  // namespace samout::model
