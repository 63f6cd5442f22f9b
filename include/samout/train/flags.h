// The command-line flags of samout_ddp (gflags, so --flagfile=configs/X.flags works), turned into
// a TrainConfig. Validation that needs no data or world happens here; the rest in the trainer.
#pragma once

#include <string>

#include "samout/dist/context.h"
#include "samout/train/config.h"

namespace samout::train {

// Reads the parsed flags. Throws UsageError naming the flag and its allowed range when a value is
// invalid on its own (every numeric flag is checked: nan, inf and out-of-range values included).
TrainConfig config_from_flags();

// ---- ranks that must agree. Collectives over MPI_COMM_WORLD: every rank calls them, in order.

// The flags that shape the run, "--name=value" a line: every flag of samout_ddp except the
// rank-local ones (--threads, --prefetch, --metrics_file, --save_weights,
// --peak_tflops), which change neither what a rank computes nor when it communicates.
std::string run_flags();

// Rank 0 broadcasts its run_flags(); "" when this rank's are the same, else one line naming the
// first flag that differs (ranks given different --lr would train diverging replicas, a different
// --hidden would fail in the first all-reduce).
std::string compare_with_root();

// True when no rank has an error (error == ""). Otherwise the lowest rank that has one prints it as
// one line, "<program>: error: [rank N: ]<error>", and every rank returns false: all of them exit
// with 2 together, and no rank is left waiting in a collective for one that gave up.
bool agree_no_error(const dist::DistContext& ctx, const std::string& error, const char* program);

}  // namespace samout::train
