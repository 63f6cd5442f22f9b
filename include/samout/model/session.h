// Session: generation with the model's state carried, so each generated token costs one T=1 pass
// through the layers however long the context (docs/model.md, State); the context is never re-run.
// On CUDA a step can be captured into a CUDA graph (one launch per token instead of one per op)
// that reads the token from, and writes the logits and states to, fixed buffers.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <optional>

#include "samout/model/samout.h"

namespace samout::model {

class Session {
 public:
  // The model is put in eval mode; its token check is turned off (the session checks prompt ids on
  // the host, and sampled ids are in range by construction), which keeps a step free of host syncs.
  // use_cuda_graph: capture the step on the first call when the model is on CUDA (ignored on CPU).
  explicit Session(SamOut model, bool use_cuda_graph = false);
  ~Session();

  // tokens (B, T) int64 ids: the start of B sequences (any state held before is dropped). Runs the
  // layers once over all T positions and the head on the last one only. Returns logits (B, V).
  torch::Tensor prefill(const torch::Tensor& tokens);
  // Starts from states computed elsewhere (e.g. prompts of different lengths prefilled one by one
  // and concatenated along the batch: generation.h): one (B, d) tensor per layer.
  void set_state(ModelState state);
  // tokens (B,) int64: one more position of every sequence. Returns logits (B, V), valid until the
  // next step (with a CUDA graph they live in the graph's output buffer).
  torch::Tensor step(const torch::Tensor& tokens);

  const ModelState& state() const { return state_; }
  int64_t position() const { return position_; }  // tokens consumed since the last prefill
  bool graph_captured() const { return graph_ != nullptr; }

 private:
  // em -> layers (state carried in and replaced) -> head on the last position. tokens (B, T).
  torch::Tensor forward_last(const torch::Tensor& tokens, ModelState& state);
  void capture_graph(int64_t batch);
  // The model's device when it is a GPU, made current (DeviceGuard) around every launch: a tensor on
  // cuda:1 with cuda:0 current would otherwise launch on cuda:0. None on the CPU.
  std::optional<c10::Device> cuda_device() const;

  SamOut model_;
  ModelState state_;
  int64_t position_ = 0;
  bool use_cuda_graph_;
  struct Graph;  // CUDA graph and its fixed buffers; defined only in CUDA builds
  std::unique_ptr<Graph> graph_;
};

}  // namespace samout::model
