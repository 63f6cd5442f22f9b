// The data-parallel training loop of samout_ddp. Each rank holds the whole model and trains on its
// G / W sequences of every global batch (micro-batches with gradient accumulation); gradients are
// summed across ranks in buckets that overlap backward (dist/grad_reducer.h). A micro-batch's loss
// is scaled by 1 / (G*T), so the sum over ranks and micro-steps is exactly the gradient of the
// global batch's mean loss at every world size.
#pragma once

#include "samout/dist/context.h"
#include "samout/train/config.h"

namespace samout::train {

// Sets up (data, model, communicator) and checks the configuration against the world and the
// corpus. If any rank's setup fails with a UsageError, every rank returns kExitUsage without
// training (the failing ranks print their one-line error). Otherwise trains and returns kExitOk;
// a failure after setup brings the whole job down (dist::abort_job) naming the rank.
int run_training(TrainConfig cfg, const dist::DistContext& ctx);

}  // namespace samout::train
