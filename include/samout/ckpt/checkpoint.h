// Sharded, atomic training checkpoints: what is in one, how it is written, how one is found again.
//
// A checkpoint is a folder ckpt_dir/step_NNNNNNNN/ holding
//   model.h5         the weights, once (rank 0), docs/model.md names (ckpt/weights_file.h)
//   optim-RRRRR.bin  Adam moments of one range of the flat parameter layout (every rank under
//                    ZeRO-1; rank 0 alone otherwise, since all ranks agree)
//   state.json       step, data cursor, RNG state, and the flags that shape the model and run
//   tokenizer.model  the corpus's SentencePiece model (rank 0; absent for random: data), so a
//                    checkpoint alone is enough to generate text
//   rank-RRRRR.json  each rank's files with size and XXH64; manifest.json: all of them, rank 0, last
// Ranks write and fsync into ckpt_dir/.tmp-step_NNNNNNNN/; rank 0 waits for every rank-*.json, writes
// the manifest and renames the folder into place. Only a folder whose files match its manifest is
// resumed from: a rank killed mid-save leaves a .tmp- folder, which the next start removes.
#pragma once

#include <torch/torch.h>

#include <future>
#include <string>
#include <utility>
#include <vector>

#include "samout/ckpt/state.h"

namespace samout::ckpt {

// What one rank contributes, already copied into host memory (the only part a save stalls on).
struct Snapshot {
  CheckpointState state;  // step and cursor on every rank; run and rng_cpu from rank 0
  std::string tokenizer;  // serialized SentencePiece model (rank 0; "" = none)
  std::vector<std::pair<std::string, torch::Tensor>> weights;  // rank 0 only; empty elsewhere
  torch::Tensor flat_weights;  // rank 0: every weight in one buffer (the views above point into
                               // it); a non-finite value in it cancels the checkpoint
  int64_t opt_total = 0, opt_begin = 0, opt_end = 0, opt_steps = 0;
  torch::Tensor exp_avg, exp_avg_sq;  // [opt_end - opt_begin]; undefined: this rank writes none
  bool debug_kill_midway = false;     // test only: SIGKILL this process after its data files
};

class CheckpointWriter {
 public:
  CheckpointWriter(std::string dir, int keep, int rank, int world);
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Writes `s` as checkpoint step_<s.state.step>. Waits for the previous save first. With async the
  // files are written by a background thread and save() returns at once.
  void save(Snapshot s, bool async);
  // Waits for the save in flight; throws std::runtime_error if it failed.
  void wait();
  // Rank 0, at start-up: removes .tmp- folders that a killed run left behind.
  static void remove_partial(const std::string& dir);

 private:
  void write(const Snapshot& s);  // the body of a save, on whichever thread
  std::string dir_;
  int keep_, rank_, world_;
  std::future<void> in_flight_;  // last: its destructor waits for the save, which uses the above
};

// ---- Finding and reading ----------------------------------------------------------------------------

std::string step_dir_name(int64_t step);  // "step_00000100"
// The names of the step_ folders in `dir`, newest first (none when `dir` cannot be read).
std::vector<std::string> checkpoint_dirs(const std::string& dir);

// "" when every file of the manifest is there with its size and checksum, else what is wrong.
std::string verify(const std::string& step_dir);

// Fills exp_avg / exp_avg_sq ([end - begin]) for range [begin, end) of the flat layout from the
// optimizer files of `step_dir`, whatever ranges they were written in (resume at another world
// size). Returns the Adam step count. Throws UsageError when the files do not cover the range.
int64_t read_optimizer_range(const std::string& step_dir, int64_t total, int64_t begin, int64_t end,
                             torch::Tensor& exp_avg, torch::Tensor& exp_avg_sq);

}  // namespace samout::ckpt
