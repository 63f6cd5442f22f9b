// Generation from prompts: prompts of different lengths prefilled into one batch (prefill_batch),
// and the loop that samples, streams the text and stops each sequence at eos or after max_tokens.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "samout/model/sampler.h"
#include "samout/model/session.h"
#include "samout/model/text_streamer.h"

namespace samout::model {

// prompts: B non-empty lists of ids. Each prompt is prefilled alone (a padded batch would let the
// padding into the running maxima), then their states are stacked into one batch of B in the
// session. Returns the logits (B, V) of each prompt's last position.
torch::Tensor prefill_batch(Session& session, const std::vector<std::vector<int>>& prompts);

struct GenerationConfig {
  int64_t max_tokens = 128;  // per sequence, > 0
  int eos = -1;              // a sequence ends when it samples this id (not kept); -1: never
};

// Text as it is completed: (row, piece, last). Pieces come non-empty while generating; at the end
// every row gets one call with last = true carrying what its streamer held back (maybe "").
using OnText = std::function<void(int64_t row, const std::string& piece, bool last)>;

struct Generation {
  std::vector<std::vector<int>> ids;  // per sequence, the generated ids (eos not included)
  std::vector<std::string> text;      // per sequence, their text as streamed
  int64_t tokens = 0;                 // ids generated over all sequences
  int64_t steps = 0;                  // Session::step calls, each for the whole batch
};

// Continues the B sequences the session holds; prompts and logits as prefill_batch took and gave
// them. One sample and one step per token for the whole batch; a finished row keeps stepping (its
// tokens are dropped) so the batch keeps its shape, and the last token needs no step after it.
// decode turns ids into text (each row's TextStreamer starts from its prompt's last id).
Generation generate(Session& session, Sampler& sampler,
                    const std::vector<std::vector<int>>& prompts, torch::Tensor logits,
                    const GenerationConfig& cfg, const TextStreamer::Decode& decode,
                    const OnText& on_text = {});

}  // namespace samout::model
