// Session (session.h): prefill, steps with the carried state, and the CUDA graph of a step.
#include "samout/model/session.h"

#include <c10/core/DeviceGuard.h>

#include <optional>
#include <string>
#include <utility>

#include "samout/common/error.h"
#include "samout/ops/linear.h"

#ifdef SAMOUT_HAVE_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace samout::model {

struct Session::Graph {
#ifdef SAMOUT_HAVE_CUDA
  at::cuda::CUDAGraph graph;
  int64_t batch = 0;
  torch::Tensor tokens;  // (B, 1) int64: the input of each replay
  ModelState state;      // (B, d) per layer: read by a replay, then overwritten with the new state
  torch::Tensor logits;  // (B, V): the output of each replay
#endif
};

Session::Session(SamOut model, bool use_cuda_graph)
    : model_(std::move(model)), use_cuda_graph_(use_cuda_graph) {
  model_->eval();
  model_->set_check_tokens(false);
}

Session::~Session() = default;

std::optional<c10::Device> Session::cuda_device() const {
  const auto device = model_->head->weight.device();
  return device.is_cuda() ? std::optional<c10::Device>(device) : std::nullopt;
}

torch::Tensor Session::forward_last(const torch::Tensor& tokens, ModelState& state) {
  // The head is the biggest matrix (V x d); only the last position's logits are wanted.
  auto e = model_->features(tokens, &state).select(/*dim=*/1, tokens.size(1) - 1);  // (B, d)
  return ops::linear(e, model_->head->weight);                                      // (B, V)
}

torch::Tensor Session::prefill(const torch::Tensor& tokens) {
  const int64_t V = model_->config().vocab_size;
  require(
      tokens.dim() == 2 && tokens.numel() > 0,
      "prefill: tokens must be a non-empty (B, T), got " + std::to_string(tokens.dim()) + " dims");
  require(!tokens.is_floating_point(), "prefill: tokens must be integer ids");
  const auto host = tokens.to(torch::kCPU, torch::kInt64);
  const int64_t lo = host.min().item<int64_t>(), hi = host.max().item<int64_t>();
  require(lo >= 0 && hi < V, "prefill: token ids must be in [0, " + std::to_string(V) + "), got [" +
                                 std::to_string(lo) + ", " + std::to_string(hi) + "]");
  torch::InferenceMode inference;
  c10::OptionalDeviceGuard guard(cuda_device());  // kernels launch on the current device
  state_.clear();
  auto logits = forward_last(tokens.to(model_->head->weight.device(), torch::kInt64), state_);
  position_ = tokens.size(1);
  return logits;
}

void Session::set_state(ModelState state) {
  const auto& cfg = model_->config();
  require(static_cast<int64_t>(state.size()) == cfg.layers,
          "set_state: " + std::to_string(state.size()) + " layers, model has " +
              std::to_string(cfg.layers));
  for (const auto& s : state)
    require(s.dim() == 2 && s.size(1) == cfg.hidden && s.size(0) == state[0].size(0),
            "set_state: each layer's state must be (B, d)");
  state_ = std::move(state);
}

torch::Tensor Session::step(const torch::Tensor& tokens) {
  TORCH_CHECK(!state_.empty(), "Session::step before prefill or set_state");
  torch::InferenceMode inference;
  // Kernels, the graph's capture and its replay use the current device, not the tensors'.
  c10::OptionalDeviceGuard guard(cuda_device());
  const int64_t B = state_[0].size(0);
  auto t = tokens.reshape({-1, 1});  // (B, 1)
  TORCH_CHECK(t.size(0) == B, "Session::step: one token per sequence (", B, "), got ", t.size(0));
  ++position_;
#ifdef SAMOUT_HAVE_CUDA
  if (use_cuda_graph_ && model_->head->weight.is_cuda()) {
    if (!graph_ || graph_->batch != B) capture_graph(B);
    auto& g = *graph_;
    // A new prefill, set_state or capture since the last step: the buffers take state_'s values.
    for (size_t i = 0; i < state_.size(); ++i) {
      if (!state_[i].is_same(g.state[i])) {
        g.state[i].copy_(state_[i]);
        state_[i] = g.state[i];
      }
    }
    g.tokens.copy_(t, /*non_blocking=*/true);
    g.graph.replay();
    return g.logits;
  }
#endif
  return forward_last(t.to(model_->head->weight.device(), torch::kInt64), state_);
}

void Session::capture_graph([[maybe_unused]] int64_t batch) {
#ifdef SAMOUT_HAVE_CUDA
  const auto device = model_->head->weight.device();
  graph_.reset();  // its buffers may be state_ itself: state_ keeps them alive
  auto g = std::make_unique<Graph>();
  g->batch = batch;
  g->tokens = torch::zeros({batch, 1}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  for (const auto& s : state_) g->state.push_back(s.clone());
  // One step whose every tensor address is fixed: the new states are copied back into the buffers
  // the next replay reads (after the kernels that read them, in stream order).
  auto body = [&] {
    ModelState s = g->state;
    auto logits = forward_last(g->tokens, s);
    for (size_t i = 0; i < s.size(); ++i) g->state[i].copy_(s[i]);
    return logits;
  };
  // Capture must not run on the legacy default stream; the warm-up creates cuBLAS handles and
  // workspaces outside the capture.
  auto side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
  side.synchronize();
  c10::cuda::getCurrentCUDAStream(device.index()).synchronize();
  {
    c10::cuda::CUDAStreamGuard guard(side);
    for (int i = 0; i < 3; ++i) body();
    g->graph.capture_begin();
    g->logits = body();
    g->graph.capture_end();
  }
  side.synchronize();
  graph_ = std::move(g);  // step() then copies state_ in, undoing the warm-up's steps
#endif
}

}  // namespace samout::model
