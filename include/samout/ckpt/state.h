// A checkpoint's state.json as a type, and which checkpoint a path names: every program reads
// checkpoints through this file, so a field is parsed and validated in one place.
//   {"format": "samout-checkpoint", "version": 1, "step": 100, "cursor": {"epoch": 0, "step": 100},
//    "world": 2, "run": {"vocab_size": ..., "optimizer": "adam", "zero": 0, "pad_id": 0},
//    "rng_cpu": "<hex bytes of torch's CPU generator state>"}
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "samout/data/loader.h"
#include "samout/model/config.h"

namespace samout::ckpt {

// The flags that shape a run. A resumed run must match every field mismatch() compares: the model's
// shape and what decides the sequence of global batches (learning rate, steps, world may change).
struct RunShape {
  int64_t vocab_size = 0, hidden = 0, layers = 0, heads = 0;
  int64_t seq_len = 0, batch_size = 0;
  uint64_t seed = 0;
  std::string data;
  std::string optimizer;  // Adam's moments mean something else to AdamW
  int zero = 0;           // not compared: ZeRO-1 shards are read back at any world size
  int64_t pad_id = -1;    // not compared: it comes from the corpus, which `data` names

  // "" when `other` may resume from this; else the first field that differs, as
  // "optimizer=\"adam\", this run has optimizer=\"adamw\"".
  std::string mismatch(const RunShape& other) const;
  model::ModelConfig model_config() const;  // the shape as the model's config
};

struct CheckpointState {
  int64_t step = 0;     // optimizer steps completed
  data::Cursor cursor;  // the loader's cursor of the next batch
  int world = 0;        // ranks that wrote it
  RunShape run;
  std::string rng_cpu;  // torch's CPU generator state, raw bytes ("" = none)

  nlohmann::json to_json() const;
  // Throws UsageError naming `where` and the field when a field is missing, of the wrong type or
  // out of range.
  static CheckpointState from_json(const nlohmann::json& j, const std::string& where);
};

// A JSON file, parsed; UsageError naming the file when it cannot be read or is not JSON.
nlohmann::json read_json(const std::string& path);

// step_dir/state.json, parsed and validated (UsageError naming the file).
CheckpointState read_state(const std::string& step_dir);

// The checkpoint `path` names: a step_ folder (one with a manifest), or a folder of them, whose
// newest valid one is taken (each one skipped is logged with the reason). The result verifies.
// `flag` names the option in errors ("--checkpoint"). Throws UsageError; with none_ok, a folder
// without any step_ folder gives "" instead (a run that starts afresh).
std::string resolve_checkpoint(const std::string& path, const std::string& flag,
                               bool none_ok = false);

}  // namespace samout::ckpt
