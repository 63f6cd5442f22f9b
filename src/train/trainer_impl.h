// The trainer's state and its parts (private to src/train):
//   setup.cpp     flags against the world and the corpus, the model, resume choice; then the
//                 communicators, the gradient reducer and the optimizer (connect)
//   step.cpp      one optimizer step: batch, micro-steps, gradient all-reduce, norm, skip, Adam
//   evaluate.cpp  the validation loss
//   trainer.cpp   the loop: steps, reports (train/metrics.h), checkpoints, preemption; and
//                 run_training, which agrees on set-up errors across ranks
#pragma once

#include <ATen/autocast_mode.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>

#include "samout/ckpt/checkpoint.h"
#include "samout/ckpt/dir_lock.h"
#include "samout/ckpt/state.h"
#include "samout/common/strings.h"
#include "samout/data/loader.h"
#include "samout/dist/communicator.h"
#include "samout/dist/context.h"
#include "samout/dist/grad_reducer.h"
#include "samout/model/samout.h"
#include "samout/train/config.h"
#include "samout/train/metrics.h"
#include "samout/train/optimizer.h"
#include "samout/train/step_timer.h"

namespace samout::train {

using Clock = std::chrono::steady_clock;

// RAII bf16 autocast for the forward pass (GPU only; checked at setup).
class AutocastScope {
 public:
  explicit AutocastScope(bool on) : on_(on) {
    if (!on_) return;
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  }
  ~AutocastScope() {
    if (!on_) return;
    at::autocast::set_autocast_enabled(at::kCUDA, false);
    at::autocast::clear_cache();
  }

 private:
  bool on_;
};

// The run stopped for a reason every rank agrees on (too many bad steps, preemption): not a crash.
struct RunStopped {
  int exit_code;
  std::string message;
};

class Trainer {
 public:
  Trainer(TrainConfig cfg, const dist::DistContext& ctx) : cfg_(std::move(cfg)), ctx_(ctx) {}

  // Everything that can fail because of the user's input happens here, before any collective.
  void setup();
  // Collectives start here: every rank passed setup().
  void connect();
  void train();

 private:
  // setup.cpp
  void choose_peak();
  void choose_resume();
  void check_checkpoint(const std::string& path);
  ckpt::RunShape run_shape() const;
  void resume_from(const std::string& path);

  // step.cpp
  void train_step(int64_t step);
  void check_bad_steps(int64_t step);
  torch::Tensor upload(const data::Batch& batch) const;
  std::pair<torch::Tensor, torch::Tensor> my_tokens(const torch::Tensor& x) const;
  double bytes_sent() const;
  torch::Tensor token_loss_sum(const torch::Tensor& logits, const torch::Tensor& targets) const;
  torch::Tensor count_targets(const torch::Tensor& targets) const;

  // evaluate.cpp
  void evaluate(int64_t step);

  // trainer.cpp
  torch::Tensor sum_over_ranks(const torch::Tensor& t);
  void report(int64_t step);
  ckpt::Snapshot snapshot(int64_t steps_done);
  void save_checkpoint(int64_t steps_done, bool async);
  bool agreed_preemption();
  void finish_checkpoints();

  TrainConfig cfg_;
  const dist::DistContext& ctx_;
  int64_t micro_ = 0, accum_ = 1, eval_batches_ = 0, tokens_done_ = 0;
  int64_t start_step_ = 0, last_saved_ = -1, bad_steps_total_ = 0;
  double peak_tflops_ = 0;                   // per device, for MFU; 0 = not reported
  std::string resume_path_;                  // rank 0's choice until connect() broadcasts it
  std::unique_ptr<ckpt::DirLock> dir_lock_;  // rank 0: this job owns --ckpt_dir
  std::unique_ptr<ckpt::CheckpointWriter> writer_;
  torch::Tensor host_params_, host_m_, host_v_;  // reused snapshot buffers (host memory)
  std::unique_ptr<data::Loader> loader_, val_loader_;
  model::SamOut model_{nullptr};
  std::unique_ptr<MetricsFile> metrics_;
  std::unique_ptr<dist::Communicator> comm_;
  std::unique_ptr<dist::Communicator> group_comm_;  // the context-parallel group's
  std::unique_ptr<dist::GradReducer> reducer_;
  std::unique_ptr<FlatAdam> optimizer_;

  // Between reports. Loss sum and target count, and the skipped steps and the current run of
  // non-finite steps ([skipped, run, longest run]): kept on the device, read only at a sync point
  // (no per-step sync on a GPU).
  torch::Tensor loss_acc_, bad_, gnorm_;
  std::unique_ptr<StepTimer> timer_;
  double lr_ = 0, host_comm_s_ = 0;
  double step_bytes_ = 0;  // sent by this rank inside train_step (dist::Communicator::bytes_sent)
  int64_t steps_since_log_ = 0, skipped_reported_ = 0;
  Clock::time_point window_start_;
};

}  // namespace samout::train
