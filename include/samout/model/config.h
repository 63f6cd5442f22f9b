// The shape of a SamOut model (docs/model.md), and the check that it makes sense.
#pragma once

#include <cstdint>
#include <string>

#include "samout/ops/cummax_gate.h"

namespace samout::model {

struct ModelConfig {
  int64_t vocab_size = 8460;  // V; the seed's 8192 + 268
  int64_t hidden = 512;       // d
  int64_t layers = 8;         // L
  int64_t heads = 8;          // h; must divide d (heads do not change the math: docs/model.md)
  int64_t pad_id = -1;        // embedding padding_idx and loss ignore_index; -1 = none
  ops::GateImpl gate = ops::GateImpl::kAuto;

  // Throws UsageError naming the offending value.
  void validate() const;
  // Parameter count, from the shapes alone (equals SamOut::parameters() summed).
  int64_t num_parameters() const;
  std::string describe() const;
};

}  // namespace samout::model
