// SamOut in LibTorch: MaxStateSuper, FeedForward, DecoderLayer, SamOut, with docs/model.md's math,
// parameter names (the seed's state_dict's) and PyTorch's default initialisation. A layer's state
// is its running maximum at the last position, (B, d): passing the states of one call into the
// next continues the sequence exactly, so every generated token costs the same.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <utility>
#include <vector>

#include "samout/model/config.h"
#include "samout/ops/context_parallel.h"

namespace samout::model {

// The per-layer states of a whole model: one (B, d) tensor per layer, empty before the first call.
using ModelState = std::vector<torch::Tensor>;

// Parameters under the seed's names, "weight" and "bias" (bias undefined when there is none), for
// the fused ops (ops/): an nn::Linear or LayerNorm would hold the same tensors but never run.
class ParamsImpl : public torch::nn::Module {
 public:
  ParamsImpl(torch::Tensor weight, torch::Tensor bias);
  torch::Tensor weight, bias;
};
TORCH_MODULE(Params);
// in -> out, initialised as torch.nn.Linear (kaiming-uniform weight, uniform bias, same draws).
Params linear_params(int64_t in, int64_t out, bool bias);
// LayerNorm's gamma (ones) and beta (zeros) over d features.
Params layer_norm_params(int64_t d);

class MaxStateSuperImpl : public torch::nn::Module {
 public:
  MaxStateSuperImpl(int64_t hidden, ops::GateImpl gate);  // heads do not change the math
  // x: (B, T, d); state: (B, d) or undefined. Returns (out (B, T, d), new state (B, d)).
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x,
                                                  const torch::Tensor& state);

  Params combined{nullptr};  // d -> 3d, no bias: a | b | c
  torch::Tensor alpha1, alpha2, alpha3, alpha4, alpha5;
  ops::GateImpl gate;
  std::shared_ptr<const ops::ContextGroup> context;  // set: x is this rank's slice of the sequence
};
TORCH_MODULE(MaxStateSuper);

class FeedForwardImpl : public torch::nn::Module {
 public:
  explicit FeedForwardImpl(int64_t hidden);
  torch::Tensor forward(const torch::Tensor& y);  // ffn2(ffn1(y) * relu(gate(y)))

  Params ffn1{nullptr}, ffn2{nullptr}, gate{nullptr};
};
TORCH_MODULE(FeedForward);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(int64_t hidden, ops::GateImpl gate);
  // The seed's layer, LayerNorm(alpha * FFN(MaxStateSuper(x)) + (1 - alpha) * x), plus x (SamOut's
  // outer residual), added in the same pass as the LayerNorm. Returns the new state too.
  std::pair<torch::Tensor, torch::Tensor> forward_residual(const torch::Tensor& x,
                                                           const torch::Tensor& state);

  MaxStateSuper self_attention{nullptr};
  FeedForward ffn{nullptr};
  Params layer_norm{nullptr};  // eps 1e-5, as torch.nn.LayerNorm's default
  torch::Tensor alpha;
};
TORCH_MODULE(DecoderLayer);

class SamOutImpl : public torch::nn::Module {
 public:
  explicit SamOutImpl(const ModelConfig& cfg);
  // tokens: (B, T) integer ids in [0, V). Returns logits (B, T, V).
  // state: if non-null, read as the states carried in (empty = start of sequence) and replaced by
  // the states at the end of this piece.
  torch::Tensor forward(const torch::Tensor& tokens, ModelState* state = nullptr);
  // forward without the head: the last layer's output (B, T, d).
  torch::Tensor features(const torch::Tensor& tokens, ModelState* state = nullptr);

  // Validation of token ids costs a device-to-host sync; the trainer, whose loader already checked
  // every id against the vocabulary, turns it off.
  void set_check_tokens(bool on) { check_tokens_ = on; }
  // Context parallelism (ops/context_parallel.h; nullptr: off): every forward without a carried state
  // sees this rank's slice of each sequence; the layers exchange running maxima within `group`.
  void set_context_parallel(std::shared_ptr<const ops::ContextGroup> group);
  const ModelConfig& config() const { return cfg_; }

  torch::nn::Embedding em{nullptr};
  torch::nn::ModuleList decoder_layers{nullptr};
  Params head{nullptr};  // d -> V, no bias

 private:
  void check_tokens(const torch::Tensor& tokens) const;
  ModelConfig cfg_;
  bool check_tokens_ = true;
};
TORCH_MODULE(SamOut);

}  // namespace samout::model
