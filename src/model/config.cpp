#include "samout/model/config.h"

#include <sstream>

#include "samout/common/error.h"

namespace samout::model {

void ModelConfig::validate() const {
  require(vocab_size > 0, "vocab_size must be positive, got " + std::to_string(vocab_size));
  require(hidden > 0, "hidden must be positive, got " + std::to_string(hidden));
  require(layers > 0, "layers must be positive, got " + std::to_string(layers));
  require(heads > 0, "heads must be positive, got " + std::to_string(heads));
  require(hidden % heads == 0, "hidden size " + std::to_string(hidden) +
                                   " is not divisible by heads " + std::to_string(heads));
  require(pad_id >= -1 && pad_id < vocab_size, "pad id " + std::to_string(pad_id) +
                                                   " is outside the vocabulary of " +
                                                   std::to_string(vocab_size));
}

int64_t ModelConfig::num_parameters() const {
  const int64_t d = hidden;
  const int64_t per_layer = 3 * d * d + 5          // combined, alpha1..5
                            + 3 * (d * d + d)      // ffn1, ffn2, gate
                            + 2 * d + 1;           // layer_norm, alpha
  return 2 * vocab_size * d + layers * per_layer;  // em, head (not tied)
}

std::string ModelConfig::describe() const {
  std::ostringstream os;
  os << "SamOut(V=" << vocab_size << ", d=" << hidden << ", L=" << layers << ", h=" << heads
     << ", pad=" << pad_id << ", gate=" << ops::to_string(gate) << ")";
  return os.str();
}

}  // namespace samout::model
