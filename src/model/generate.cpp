// Sampling, the state-carrying generation session, and streaming decode (see generate.h).
#include "samout/model/generate.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "samout/common/error.h"
#include "samout/ops/gemv.h"

#ifdef SAMOUT_HAVE_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace samout::model {

// ---- Sampling
// ---------------------------------------------------------------------------------------

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

// ---- The CPU decode step
// ---------------------------------------------------------------------------
//
// One position of a few sequences (B <= kGemvMaxRows, T = 1) reads every weight matrix once and
// does ~2 flops per weight, so on the CPU its time is the time to stream the weights from memory.
// Through the modules each product is a GEMM with M = B, made for large M: MKL's sgemm streams the
// weights at ~60% of the bandwidth on the AMD Zen 3 development machine and does not scale to a
// second core; and some forty small ATen
// ops per layer add their dispatch costs at d = 512. So the step is written out here: the five
// products of a layer and the head on ops::gemv_f32 (all rows of the batch in one pass over each
// weight, split across threads), the rest as plain loops over B x d floats in one scratch buffer.
// The math is the modules' (SPEC.md), term by term:
//   y = combined(e) = a | b | c;  m = max(state, c) (torch.cummax's rule);
//   u = (a + b + c + alpha2 + alpha5) * m + alpha3 * a + alpha1 * b + alpha4 * c
//   f = ffn2(ffn1(u) * relu(gate(u)));  e <- LayerNorm(alpha * f + (1 - alpha) * e) + e
//   logits = head(e)
// and tests/generate checks it against the whole-sequence forward of the modules.
namespace {

bool dense_f32_cpu(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.layout() == torch::kStrided &&
         t.scalar_type() == torch::kFloat && t.is_contiguous() && !t.is_neg();
}

bool dense_f32_cpu(const torch::Tensor& t, std::initializer_list<int64_t> sizes) {
  return dense_f32_cpu(t) && t.sizes() == c10::IntArrayRef(sizes);
}

// Whether cpu_step applies: one position per sequence, at most kGemvMaxRows sequences, and every
// tensor it reads a dense fp32 CPU tensor of the expected shape (so, e.g., a model on CUDA, in
// bf16, or a state of another dtype takes the modules' path, which converts or complains).
bool cpu_step_applies(SamOutImpl& model, const torch::Tensor& tokens, const ModelState& state) {
  if (tokens.dim() != 2 || tokens.size(1) != 1 || !tokens.device().is_cpu() ||
      tokens.scalar_type() != torch::kInt64)
    return false;
  const int64_t B = tokens.size(0);
  if (B < 1 || B > ops::kGemvMaxRows) return false;
  const auto& cfg = model.config();
  const int64_t d = cfg.hidden;
  if (!dense_f32_cpu(model.em->weight, {cfg.vocab_size, d}) ||
      !dense_f32_cpu(model.head->weight, {cfg.vocab_size, d}))
    return false;
  for (int64_t i = 0; i < cfg.layers; ++i) {
    const auto layer = model.decoder_layers[i]->as<DecoderLayer>();
    const auto& sa = *layer->self_attention;
    const auto& ffn = *layer->ffn;
    const auto& ln = *layer->layer_norm;
    const bool ok = dense_f32_cpu(sa.combined->weight, {3 * d, d}) &&
                    dense_f32_cpu(sa.alpha1, {}) && dense_f32_cpu(sa.alpha2, {}) &&
                    dense_f32_cpu(sa.alpha3, {}) && dense_f32_cpu(sa.alpha4, {}) &&
                    dense_f32_cpu(sa.alpha5, {}) && dense_f32_cpu(ffn.ffn1->weight, {d, d}) &&
                    dense_f32_cpu(ffn.ffn1->bias, {d}) && dense_f32_cpu(ffn.gate->weight, {d, d}) &&
                    dense_f32_cpu(ffn.gate->bias, {d}) && dense_f32_cpu(ffn.ffn2->weight, {d, d}) &&
                    dense_f32_cpu(ffn.ffn2->bias, {d}) && dense_f32_cpu(ln.weight, {d}) &&
                    dense_f32_cpu(ln.bias, {d}) && dense_f32_cpu(layer->alpha, {});
    if (!ok) return false;
    if (state[i].defined() && !dense_f32_cpu(state[i], {B, d})) return false;
  }
  return true;
}

// torch.cummax's update rule, as the fused gate applies it with a carried state: the new value
// wins when it is >= the running max or NaN (NaN propagates).
inline float take_max(float running, float v) { return (v >= running || v != v) ? v : running; }

// tokens (B, 1) int64 on the CPU; state: one undefined or (B, d) tensor per layer, replaced by new
// tensors (never written in place: a caller may hold the old ones via Session::state()). Returns
// logits (B, V). Only for arguments cpu_step_applies() accepts.
torch::Tensor cpu_step(SamOutImpl& model, const torch::Tensor& tokens, ModelState& state) {
  const auto& cfg = model.config();
  const int64_t B = tokens.size(0), d = cfg.hidden, V = cfg.vocab_size;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat);
  // Scratch, B rows each: e (d) | y = a|b|c (3d) | u (d) | p (d) | q (d) | f (d).
  auto scratch = torch::empty({B * 8 * d}, f32);
  float* const e = scratch.data_ptr<float>();
  float* const y = e + B * d;
  float* const u = y + B * 3 * d;
  float* const p = u + B * d;
  float* const q = p + B * d;
  float* const f = q + B * d;

  // Embedding rows. Ids are checked here: a step reads the table directly.
  const auto ids = tokens.accessor<int64_t, 2>();
  const float* em = model.em->weight.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t id = ids[b][0];
    TORCH_CHECK(id >= 0 && id < V, "Session::step: token id ", id, " is not in [0, ", V, ")");
    std::memcpy(e + b * d, em + id * d, d * sizeof(float));
  }

  ModelState next(cfg.layers);
  for (int64_t i = 0; i < cfg.layers; ++i) {
    const auto layer = model.decoder_layers[i]->as<DecoderLayer>();
    const auto& sa = *layer->self_attention;
    const auto& ffn = *layer->ffn;
    const auto& ln = *layer->layer_norm;

    // MaxStateSuper: the gate at one position, in the fused CPU kernel's order of operations.
    ops::gemv_f32(e, B, d, sa.combined->weight.data_ptr<float>(), 3 * d, nullptr, y);
    const float a1 = *sa.alpha1.data_ptr<float>(), a3 = *sa.alpha3.data_ptr<float>(),
                a4 = *sa.alpha4.data_ptr<float>();
    const float a25 = *sa.alpha2.data_ptr<float>() + *sa.alpha5.data_ptr<float>();
    const float* s = state[i].defined() ? state[i].data_ptr<float>() : nullptr;
    next[i] = torch::empty({B, d}, f32);
    float* m_out = next[i].data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      const float* yb = y + b * 3 * d;
      for (int64_t j = 0; j < d; ++j) {
        const float av = yb[j], bv = yb[d + j], cv = yb[2 * d + j];
        const float mv = take_max(s ? s[b * d + j] : -std::numeric_limits<float>::infinity(), cv);
        m_out[b * d + j] = mv;
        u[b * d + j] = (av + bv + cv + a25) * mv + a3 * av + a1 * bv + a4 * cv;
      }
    }

    // FeedForward: ffn2(ffn1(u) * relu(gate(u))).
    ops::gemv_f32(u, B, d, ffn.ffn1->weight.data_ptr<float>(), d, ffn.ffn1->bias.data_ptr<float>(),
                  p);
    ops::gemv_f32(u, B, d, ffn.gate->weight.data_ptr<float>(), d, ffn.gate->bias.data_ptr<float>(),
                  q);
    for (int64_t k = 0; k < B * d; ++k) {
      const float g = q[k];
      p[k] *= (g > 0.0f || g != g) ? g : 0.0f;  // relu, NaN kept as torch.relu keeps it
    }
    ops::gemv_f32(p, B, d, ffn.ffn2->weight.data_ptr<float>(), d, ffn.ffn2->bias.data_ptr<float>(),
                  f);

    // e <- LayerNorm(alpha * f + (1 - alpha) * e) + e, LayerNorm's statistics in double.
    const float al = *layer->alpha.data_ptr<float>(), one_minus = 1.0f - al;
    const float* gamma = ln.weight.data_ptr<float>();
    const float* beta = ln.bias.data_ptr<float>();
    const double eps = ln.options.eps();
    for (int64_t b = 0; b < B; ++b) {
      float* fb = f + b * d;
      float* eb = e + b * d;
      double sum = 0.0;
      for (int64_t j = 0; j < d; ++j) {
        fb[j] = al * fb[j] + one_minus * eb[j];
        sum += fb[j];
      }
      const double mean = sum / d;
      double var = 0.0;
      for (int64_t j = 0; j < d; ++j) var += (fb[j] - mean) * (fb[j] - mean);
      const float rstd = static_cast<float>(1.0 / std::sqrt(var / d + eps));
      const float meanf = static_cast<float>(mean);
      for (int64_t j = 0; j < d; ++j) eb[j] += (fb[j] - meanf) * rstd * gamma[j] + beta[j];
    }
  }

  auto logits = torch::empty({B, V}, f32);
  ops::gemv_f32(e, B, d, model.head->weight.data_ptr<float>(), V, nullptr,
                logits.data_ptr<float>());
  state = std::move(next);
  return logits;
}

}  // namespace

// ---- Session
// ----------------------------------------------------------------------------------------

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

bool Session::graph_captured() const { return graph_ != nullptr; }

torch::Tensor Session::forward_last(const torch::Tensor& tokens, ModelState& state) {
  const auto& cfg = model_->config();
  const int64_t T = tokens.size(1);
  if (state.empty()) state.resize(cfg.layers);
  // On the CPU, a step (and a one-token prefill) of at most kGemvMaxRows sequences: see cpu_step.
  if (cpu_step_applies(*model_, tokens, state)) return cpu_step(*model_, tokens, state);
  auto e = model_->em(tokens);  // (B, T, d)
  for (int64_t i = 0; i < cfg.layers; ++i) {
    auto layer = model_->decoder_layers[i]->as<DecoderLayer>();
    auto [out, new_state] = layer->forward_residual(e, state[i]);
    e = std::move(out);  // layer(e) + e: the outer residual (SPEC.md)
    state[i] = std::move(new_state);
  }
  // The head is the biggest matrix (V x d); only the last position's logits are wanted.
  return model_->head(e.select(/*dim=*/1, T - 1));  // (B, V)
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
  const auto device = model_->head->weight.device();
  state_.clear();
  auto logits = forward_last(tokens.to(device, torch::kInt64), state_);
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
  const int64_t B = state_[0].size(0);
  auto t = tokens.reshape({-1, 1});  // (B, 1)
  TORCH_CHECK(t.size(0) == B, "Session::step: one token per sequence (", B, "), got ", t.size(0));
  ++position_;
#ifdef SAMOUT_HAVE_CUDA
  if (use_cuda_graph_ && model_->head->weight.is_cuda()) {
    if (!graph_ || graph_->batch != B) capture_graph(B);
    auto& g = *graph_;
    for (size_t i = 0; i < state_.size(); ++i) {  // a new prefill or set_state since the last step
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

void Session::capture_graph(int64_t batch) {
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
  for (size_t i = 0; i < state_.size(); ++i) {  // undo the warm-up's steps
    g->state[i].copy_(state_[i]);
    state_[i] = g->state[i];
  }
  graph_ = std::move(g);
#else
  (void)batch;
#endif
}

// ---- TextStreamer
// -----------------------------------------------------------------------------------

namespace {
// SentencePiece decodes an incomplete byte-fallback character as U+FFFD (EF BF BD).
bool ends_incomplete(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}
}  // namespace

TextStreamer::TextStreamer(Decode decode, int context, int64_t window)
    : decode_(std::move(decode)), window_(window) {
  if (context >= 0) cache_.push_back(context);
  printed_ = cache_.empty() ? 0 : decode_(cache_).size();
}

std::string TextStreamer::push(int id) {
  cache_.push_back(id);
  const std::string text = decode_(cache_);
  // Hold back a character still waiting for bytes (UTF-8 has at most 4), unless the window has
  // grown far too long (a stream of stray bytes that never completes).
  const int64_t limit = std::max<int64_t>(4 * window_, 8);
  const bool hold = ends_incomplete(text) && static_cast<int64_t>(cache_.size()) < limit;
  if (hold) return "";
  std::string out = text.size() > printed_ ? text.substr(printed_) : std::string();
  printed_ = text.size();
  if (static_cast<int64_t>(cache_.size()) >= window_) {  // restart, the last id as context
    cache_.assign(1, id);
    printed_ = decode_(cache_).size();
  }
  return out;
}

std::string TextStreamer::finish() {
  const std::string text = cache_.empty() ? std::string() : decode_(cache_);
  std::string out = text.size() > printed_ ? text.substr(printed_) : std::string();
  printed_ = text.size();
  return out;
}

}  // namespace samout::model
