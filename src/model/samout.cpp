// SamOut's modules. Member and registration names are the seed's state_dict names (docs/model.md).
#include "samout/model/samout.h"

#include "samout/common/error.h"
#include "samout/ops/gated_ffn.h"
#include "samout/ops/linear.h"
#include "samout/ops/mix_norm.h"

namespace samout::model {

// ---- Params ---------------------------------------------------------------------------------------

ParamsImpl::ParamsImpl(torch::Tensor w, torch::Tensor b) {
  weight = register_parameter("weight", std::move(w));
  if (b.defined()) bias = register_parameter("bias", std::move(b));
}

Params linear_params(int64_t in, int64_t out, bool with_bias) {
  torch::NoGradGuard no_grad;
  auto w = torch::empty({out, in});
  torch::nn::init::kaiming_uniform_(w, std::sqrt(5.0));  // torch.nn.Linear's reset_parameters
  torch::Tensor b;
  if (with_bias) b = torch::empty({out}).uniform_(-1.0 / std::sqrt(in), 1.0 / std::sqrt(in));
  return Params(w, b);
}

Params layer_norm_params(int64_t d) { return Params(torch::ones({d}), torch::zeros({d})); }

// ---- MaxStateSuper ---------------------------------------------------------------------------------

MaxStateSuperImpl::MaxStateSuperImpl(int64_t hidden, ops::GateImpl gate_impl) : gate(gate_impl) {
  combined = register_module("combined", linear_params(hidden, 3 * hidden, /*bias=*/false));
  alpha1 = register_parameter("alpha1", torch::tensor(0.5f));
  alpha2 = register_parameter("alpha2", torch::tensor(0.5f));
  alpha3 = register_parameter("alpha3", torch::tensor(0.5f));
  alpha4 = register_parameter("alpha4", torch::tensor(0.5f));
  alpha5 = register_parameter("alpha5", torch::tensor(0.5f));
}

std::pair<torch::Tensor, torch::Tensor> MaxStateSuperImpl::forward(const torch::Tensor& x,
                                                                   const torch::Tensor& state) {
  // ops::linear: at::linear, or the GEMV when decoding a few rows (ops/linear.h).
  auto y = ops::linear(x, combined->weight);  // (B, T, 3d): a | b | c, read in place by the gate
  // (5,), cummax_gate's layout. Under autocast the projection's output may be bf16 while the alphas
  // stay fp32; the gate runs in the projection's dtype.
  auto al = torch::stack({alpha1, alpha2, alpha3, alpha4, alpha5}).to(y.scalar_type());
  auto st = state.defined() ? state.to(y.scalar_type()) : state;
  // A sequence split over a context-parallel group: the carry comes from the earlier slices.
  auto r = context && context->size > 1 && !st.defined()
               ? ops::cummax_gate_context_parallel(y, al, *context)
               : ops::cummax_gate(y, al, st, gate);
  return {r.out, r.state};
}

// ---- FeedForward -----------------------------------------------------------------------------------

FeedForwardImpl::FeedForwardImpl(int64_t hidden) {
  ffn1 = register_module("ffn1", linear_params(hidden, hidden, /*bias=*/true));
  ffn2 = register_module("ffn2", linear_params(hidden, hidden, /*bias=*/true));
  gate = register_module("gate", linear_params(hidden, hidden, /*bias=*/true));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& y) {
  // ffn2(ffn1(y) * relu(gate(y))), with ffn1 and gate as one product (ops/gated_ffn.h).
  return ops::gated_ffn(y, ffn1->weight, ffn1->bias, gate->weight, gate->bias, ffn2->weight,
                        ffn2->bias);
}

// ---- DecoderLayer ----------------------------------------------------------------------------------

DecoderLayerImpl::DecoderLayerImpl(int64_t hidden, ops::GateImpl gate) {
  self_attention = register_module("self_attention", MaxStateSuper(hidden, gate));
  ffn = register_module("ffn", FeedForward(hidden));
  layer_norm = register_module("layer_norm", layer_norm_params(hidden));
  alpha = register_parameter("alpha", torch::tensor(0.5f));
}

std::pair<torch::Tensor, torch::Tensor> DecoderLayerImpl::forward_residual(
    const torch::Tensor& x, const torch::Tensor& state) {
  auto [y, new_state] = self_attention(x, state);
  // LayerNorm(alpha * f + (1 - alpha) * x) + x in one pass over the rows (ops/mix_norm.h).
  auto out = ops::mix_layer_norm(ffn(y), x, alpha, layer_norm->weight, layer_norm->bias,
                                 /*eps=*/1e-5, /*add_residual=*/true);
  return {out, new_state};
}

// ---- SamOut ----------------------------------------------------------------------------------------

SamOutImpl::SamOutImpl(const ModelConfig& cfg) : cfg_(cfg) {
  cfg_.validate();
  auto em_opts = torch::nn::EmbeddingOptions(cfg.vocab_size, cfg.hidden);
  if (cfg.pad_id >= 0) em_opts.padding_idx(cfg.pad_id);
  em = register_module("em", torch::nn::Embedding(em_opts));
  decoder_layers = register_module("decoder_layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.layers; ++i)
    decoder_layers->push_back(DecoderLayer(cfg.hidden, cfg.gate));
  head = register_module("head", linear_params(cfg.hidden, cfg.vocab_size, /*bias=*/false));
}

void SamOutImpl::set_context_parallel(std::shared_ptr<const ops::ContextGroup> group) {
  for (int64_t i = 0; i < cfg_.layers; ++i)
    decoder_layers[i]->as<DecoderLayer>()->self_attention->context = group;
}

void SamOutImpl::check_tokens(const torch::Tensor& tokens) const {
  require(tokens.dim() == 2,
          "tokens must be (B, T), got " + std::to_string(tokens.dim()) + " dims");
  require(tokens.numel() > 0, "empty input: tokens have shape (" + std::to_string(tokens.size(0)) +
                                  ", " + std::to_string(tokens.size(1)) + ")");
  require(
      !tokens.is_floating_point() && !tokens.is_complex(),
      std::string("tokens must be integer ids, got dtype ") + c10::toString(tokens.scalar_type()));
  if (!check_tokens_) return;
  const int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
  require(lo >= 0, "token id " + std::to_string(lo) + " is negative");
  require(hi < cfg_.vocab_size, "token id " + std::to_string(hi) + " is >= vocab size " +
                                    std::to_string(cfg_.vocab_size));
}

torch::Tensor SamOutImpl::forward(const torch::Tensor& tokens, ModelState* state) {
  return ops::linear(features(tokens, state), head->weight);  // (B, T, V)
}

torch::Tensor SamOutImpl::features(const torch::Tensor& tokens, ModelState* state) {
  check_tokens(tokens);
  if (state) {
    require(state->empty() || static_cast<int64_t>(state->size()) == cfg_.layers,
            "state holds " + std::to_string(state->size()) + " layers, model has " +
                std::to_string(cfg_.layers));
    if (state->empty()) state->resize(cfg_.layers);
  }
  auto e = em(tokens);  // (B, T, d)
  for (int64_t i = 0; i < cfg_.layers; ++i) {
    auto layer = decoder_layers[i]->as<DecoderLayer>();
    torch::Tensor in_state = state ? (*state)[i] : torch::Tensor();
    auto [out, new_state] = layer->forward_residual(e, in_state);
    e = std::move(out);  // layer(e) + e: the outer residual, as in the seed
    if (state) (*state)[i] = std::move(new_state);
  }
  return e;
}

}  // namespace samout::model
