// The command-line flags of samout_ddp (gflags, so --flagfile=configs/X.flags works), turned into
// a TrainConfig. Validation that needs no data or world happens here; the rest in the trainer.
#pragma once

#include "samout/train/config.h"

namespace samout::train {

// Reads the parsed flags. Throws UsageError naming the flag when a value is invalid on its own.
TrainConfig config_from_flags();

}  // namespace samout::train
