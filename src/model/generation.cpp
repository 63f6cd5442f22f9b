// Batched prefill and the generation loop (generation.h).
#include "samout/model/generation.h"

#include <string>
#include <utility>

#include "samout/common/error.h"

namespace samout::model {

namespace {

torch::Tensor as_row(const std::vector<int>& ids) {  // (1, T) int64 on the CPU
  return torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kInt64).unsqueeze(0);
}

}  // namespace

torch::Tensor prefill_batch(Session& session, const std::vector<std::vector<int>>& prompts) {
  require(!prompts.empty(), "prefill_batch: no prompts");
  std::vector<torch::Tensor> logits;
  std::vector<ModelState> states;
  for (size_t b = 0; b < prompts.size(); ++b) {
    require(!prompts[b].empty(), "prompt " + std::to_string(b + 1) + " has no tokens");
    logits.push_back(session.prefill(as_row(prompts[b])));  // (1, V)
    states.push_back(session.state());
  }
  if (prompts.size() > 1) {  // one prompt: its state is already the session's
    ModelState stacked;
    for (size_t l = 0; l < states[0].size(); ++l) {
      std::vector<torch::Tensor> rows;
      for (const auto& s : states) rows.push_back(s[l]);
      stacked.push_back(torch::cat(rows, /*dim=*/0));  // (B, d)
    }
    session.set_state(std::move(stacked));
  }
  return torch::cat(logits, /*dim=*/0);  // (B, V)
}

Generation generate(Session& session, Sampler& sampler,
                    const std::vector<std::vector<int>>& prompts, torch::Tensor logits,
                    const GenerationConfig& cfg, const TextStreamer::Decode& decode,
                    const OnText& on_text) {
  const int64_t B = static_cast<int64_t>(prompts.size());
  require(cfg.max_tokens > 0, "max_tokens must be > 0, got " + std::to_string(cfg.max_tokens));
  require(logits.dim() == 2 && logits.size(0) == B,
          "generate: logits must be (B, V) for the " + std::to_string(B) + " prompts");
  const bool penalty = sampler.config().repetition_penalty != 1.0;
  // The tokens of each row's context, for the repetition penalty only.
  torch::Tensor seen;
  if (penalty) {
    seen = torch::zeros(logits.sizes(), logits.options().dtype(torch::kBool));
    for (int64_t b = 0; b < B; ++b)
      seen[b].index_fill_(0, as_row(prompts[b])[0].to(logits.device()), true);
  }
  Generation out;
  out.ids.resize(B);
  out.text.resize(B);
  std::vector<TextStreamer> streams;
  for (int64_t b = 0; b < B; ++b) {
    require(!prompts[b].empty(), "prompt " + std::to_string(b + 1) + " has no tokens");
    streams.emplace_back(decode, prompts[b].back());
  }
  std::vector<bool> done(B, false);
  for (int64_t n = 0; n < cfg.max_tokens; ++n) {
    auto next = sampler.sample(logits, seen);  // (B,)
    const auto host = next.to(torch::kCPU).contiguous();
    const int64_t* id = host.data_ptr<int64_t>();
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      if (done[b]) continue;
      if (id[b] == cfg.eos) {
        done[b] = true;
        continue;
      }
      all_done = false;
      ++out.tokens;
      out.ids[b].push_back(static_cast<int>(id[b]));
      const std::string piece = streams[b].push(static_cast<int>(id[b]));
      out.text[b] += piece;
      if (on_text && !piece.empty()) on_text(b, piece, /*last=*/false);
    }
    if (all_done || n + 1 == cfg.max_tokens) break;
    if (penalty) seen.scatter_(1, next.unsqueeze(1), true);
    logits = session.step(next);
    ++out.steps;
  }
  for (int64_t b = 0; b < B; ++b) {
    const std::string rest = streams[b].finish();
    out.text[b] += rest;
    if (on_text) on_text(b, rest, /*last=*/true);
  }
  return out;
}

}  // namespace samout::model
