// Text generation with SamOut: a sampler (repetition penalty, temperature, top-k, top-p, seeded
// draws) and a session that carries the model's state, so each generated token costs one T=1 pass
// through the layers whatever the length of the context (SPEC.md, "State: constant cost per
// generated token"). The context is never re-run.
//
//   Session s(model);
//   auto logits = s.prefill(prompt);          // (B, T) ids -> (B, V): layers once, head on the
//   last position for (...) { auto tok = sampler.sample(logits, seen);  logits = s.step(tok); } //
//   tok (B,)
//
// On CUDA, a session can capture its step into a CUDA graph (one launch per token instead of one
// per op); the graph reads the token from, and writes the logits and states to, fixed buffers.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "samout/model/samout.h"

namespace samout::model {

// ---- Sampling -----------------------------------------------------------------------------------

struct SamplingConfig {
  double temperature = 1.0;  // 0 = greedy (argmax); otherwise logits / temperature
  int64_t top_k = 0;         // keep the k largest logits; 0 = all
  double top_p = 1.0;        // keep the smallest set of most likely tokens with mass >= p; 1 = all
  double repetition_penalty = 1.0;  // CTRL / Hugging Face: a seen token's logit is divided by it
                                    // when positive, multiplied when negative; 1 = off
  // Throws UsageError naming the offending value.
  void validate() const;
};

// The steps of sample(), in the order it applies them (Hugging Face's order). logits (B, V) float,
// changed in place; filtered entries become -inf.
void apply_repetition_penalty(torch::Tensor& logits, const torch::Tensor& seen, double penalty);
void apply_top_k(torch::Tensor& logits, int64_t k);
void apply_top_p(torch::Tensor& logits,
                 double p);  // on softmax(logits); the most likely always stays

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

// ---- Session: the carried state
// -------------------------------------------------------------------

class Session {
 public:
  // The model is put in eval mode; its token check is turned off (the session checks prompt ids on
  // the host, and sampled ids are in range by construction), which keeps a step free of host syncs.
  // use_cuda_graph: capture the step on the first call when the model is on CUDA (ignored on CPU).
  explicit Session(SamOut model, bool use_cuda_graph = false);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // tokens (B, T) int64 ids: the start of B sequences (any state held before is dropped). Runs the
  // layers once over all T positions and the head on the last one only. Returns logits (B, V).
  torch::Tensor prefill(const torch::Tensor& tokens);
  // Starts from states computed elsewhere (e.g. prompts of different lengths prefilled one by one
  // and concatenated along the batch): one (B, d) tensor per layer.
  void set_state(ModelState state);
  // tokens (B,) int64: one more position of every sequence. Returns logits (B, V), valid until the
  // next step (with a CUDA graph they live in the graph's output buffer).
  torch::Tensor step(const torch::Tensor& tokens);

  const ModelState& state() const { return state_; }
  int64_t position() const { return position_; }  // tokens consumed since the last prefill
  bool graph_captured() const;

 private:
  // em -> layers (state carried in and replaced) -> head on the last position. tokens (B, T).
  torch::Tensor forward_last(const torch::Tensor& tokens, ModelState& state);
  void capture_graph(int64_t batch);

  SamOut model_;
  ModelState state_;
  int64_t position_ = 0;
  bool use_cuda_graph_;
  struct Graph;  // CUDA graph and its fixed buffers; defined only in CUDA builds
  std::unique_ptr<Graph> graph_;
};

// ---- Streaming text
// -------------------------------------------------------------------------------

// Turns generated ids into text as they come, printing each piece once. Decoding a growing window
// would cost O(n) per token; instead the window restarts every `window` tokens at a clean boundary,
// seeded with one token of context so that a leading "▁" (a space) decodes as a space and a
// byte-fallback character split across tokens is held back until it is complete.
class TextStreamer {
 public:
  using Decode = std::function<std::string(const std::vector<int>&)>;
  // context: the last id before the generated ones (-1: none).
  TextStreamer(Decode decode, int context, int64_t window = 32);
  std::string push(int id);  // the new text this id completes (maybe "")
  std::string finish();      // whatever is held back (an incomplete character), as decoded

 private:
  Decode decode_;
  std::vector<int> cache_;
  size_t printed_ = 0;  // bytes of decode(cache_) already returned
  int64_t window_;
};

}  // namespace samout::model
