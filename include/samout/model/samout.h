// SamOut in LibTorch: MaxStateSuper, FeedForward, DecoderLayer and SamOut, with SPEC.md's math,
// parameter names (those of the seed's state_dict) and PyTorch's default initialisation.
//
// State: each layer's state is its running maximum at the last position, (B, d). Passing the states
// returned by one call into the next continues the sequence exactly, so generation costs the same
// for every token however long the context.
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
// the ops to use. A torch::nn::Linear or LayerNorm in its place would hold the same tensors, but its
// forward would never run: the layers call the fused ops (ops/) with them.
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
  MaxStateSuperImpl(int64_t hidden, int64_t heads, ops::GateImpl gate);
  // x: (B, T, d); state: (B, d) or undefined. Returns (out (B, T, d), new state (B, d)).
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x,
                                                  const torch::Tensor& state);
  // (5,) view of alpha1..alpha5, the layout cummax_gate takes.
  torch::Tensor alphas() const;

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
  DecoderLayerImpl(int64_t hidden, int64_t heads, ops::GateImpl gate);
  // LayerNorm(alpha * FFN(MaxStateSuper(x)) + (1 - alpha) * x); returns the new state too.
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x,
                                                  const torch::Tensor& state);
  // forward's output plus x (SamOut's outer residual), added in the same pass as the LayerNorm.
  std::pair<torch::Tensor, torch::Tensor> forward_residual(const torch::Tensor& x,
                                                           const torch::Tensor& state);

  MaxStateSuper self_attention{nullptr};
  FeedForward ffn{nullptr};
  Params layer_norm{nullptr};  // eps 1e-5, as torch.nn.LayerNorm's default
  torch::Tensor alpha;

 private:
  std::pair<torch::Tensor, torch::Tensor> run(const torch::Tensor& x, const torch::Tensor& state,
                                              bool add_residual);
};
TORCH_MODULE(DecoderLayer);

class SamOutImpl : public torch::nn::Module {
 public:
  explicit SamOutImpl(const ModelConfig& cfg);
  // tokens: (B, T) integer ids in [0, V). Returns logits (B, T, V).
  // state: if non-null, read as the states carried in (empty = start of sequence) and replaced by
  // the states at the end of this piece.
  torch::Tensor forward(const torch::Tensor& tokens, ModelState* state = nullptr);

  // Validation of token ids costs a device-to-host sync; the trainer, whose loader already checked
  // every id against the vocabulary, turns it off.
  void set_check_tokens(bool on) { check_tokens_ = on; }
  // Context parallelism: every forward without a carried state sees this rank's slice of each
  // sequence, and the layers exchange running-maximum summaries within `group` (ops/context_parallel.h).
  // nullptr: whole sequences.
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

// Mean next-token cross entropy. logits (B, T, V), targets (B, T); targets equal to pad are ignored.
torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets, int64_t pad_id);

}  // namespace samout::model
