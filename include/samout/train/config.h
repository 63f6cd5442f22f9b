// Everything that shapes a training run, filled from the command line in one place (flags.cpp)
// and passed down; nothing deeper reads a flag.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "samout/dist/context.h"
#include "samout/model/config.h"

namespace samout::train {

enum class Optimizer { kAdam, kAdamW };  // adam (the seed's) | adamw
enum class LrSchedule { kConstant, kCosine };
enum class Precision { kFp32, kBf16 };  // bf16: autocast, GPU only
const char* to_string(Optimizer o);     // "adam" | "adamw", as the flag and checkpoints spell it

struct TrainConfig {
  model::ModelConfig model;  // vocab_size 0 = take the corpus's
  int64_t seq_len = 50;      // T: tokens predicted per sequence

  // Data
  std::string data = "random:0";  // glob of HDF5 shards, or random:SEED
  std::string val_data;           // "" = no evaluation
  int prefetch = 4;

  // Batch: batch_size is the global batch in sequences, the same at every world size;
  // micro_batch is per rank (0 = batch_size / world, no accumulation).
  int64_t batch_size = 32;
  int64_t micro_batch = 0;

  // Budget: steps, or tokens (when set, it replaces steps: ceil(tokens / (batch_size * seq_len))).
  int64_t steps = 100;
  int64_t tokens = 0;

  // Optimizer and schedule
  Optimizer optimizer = Optimizer::kAdam;
  double lr = 1e-3, min_lr = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  LrSchedule lr_schedule = LrSchedule::kConstant;  // cosine: after warmup
  int64_t warmup_steps = 0;
  double grad_clip = 0.0;  // max global grad norm; 0 = off

  // Run
  uint64_t seed = 0;
  dist::DeviceRequest device = dist::DeviceRequest::kAuto;
  Precision precision = Precision::kFp32;
  bool tf32 = false;  // GPU fp32 products on TF32 tensor cores
  int threads = 0;    // intra-op threads per rank; 0 = cores / ranks on the node
  int64_t log_every = 10;
  std::string metrics_file;
  int64_t eval_every = 0;  // 0 = only at the end (when val_data is set)
  int64_t eval_batches = 8;
  double peak_tflops = 0;  // for MFU; 0 = the card's dense peak (train/mfu.h), or no MFU

  // Weights in and out (HDF5 with docs/model.md's names; see ckpt/weights_file.h)
  std::string init_from;     // initial weights instead of the seeded initialisation
  std::string save_weights;  // final weights, written by rank 0

  // Checkpoints (ckpt/checkpoint.h)
  std::string ckpt_dir;         // "" = no checkpoints
  int64_t ckpt_every = 0;       // steps between checkpoints; 0 = only at the end and on preemption
  int keep_ckpts = 3;           // newest complete checkpoints kept
  std::string resume = "auto";  // auto (newest valid in ckpt_dir) | never | PATH of a step_ folder
  bool ckpt_async = true;       // write in a background thread (the step only waits for the copy)
  int zero = 0;                 // 1 = ZeRO-1: optimizer state sharded over ranks
  int64_t max_bad_steps = 10;   // consecutive non-finite steps before the run stops
  std::vector<int64_t> debug_nan_steps;  // test only: steps whose loss is made NaN on rank 0
  int64_t debug_kill_in_save = -1;  // test only: the last rank SIGKILLs itself saving this step
  bool debug_sync_check = false;    // test only: host syncs inside a GPU step are errors

  // Communication
  int64_t bucket_mb = 25;
  double comm_timeout_s = 300;
  dist::CommRequest comm = dist::CommRequest::kAuto;  // dist/context.h
  int context_parallel = 1;  // N ranks share each sequence, T/N tokens each
};

}  // namespace samout::train
