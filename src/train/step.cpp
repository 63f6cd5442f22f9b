// One optimizer step: the batch, the micro-steps (forward, loss, backward with the gradient
// all-reduce overlapped), the global gradient norm, the decision to skip a non-finite step, clipping
// and Adam (see trainer_impl.h).
// First: torch's headers define a LOG of their own, which glog's (included after) replaces.
#include "trainer_impl.h"

#include <glog/logging.h>

#include <algorithm>
#include <limits>

#include "samout/common/error.h"

#ifdef SAMOUT_HAVE_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace samout::train {

namespace {

// Test only (--debug_sync_check): while alive, CUDA's sync-debug mode is "error", so any host
// synchronisation (item(), nonzero(), a pageable copy, a stream sync) throws.
class SyncCheck {
 public:
  explicit SyncCheck(bool on) : on_(on) { set(on_); }
  ~SyncCheck() { end(); }
  void end() {
    if (on_) set(false);
    on_ = false;
  }

 private:
  static void set(bool error) {
#ifdef SAMOUT_HAVE_CUDA
    c10::cuda::warning_state().set_sync_debug_mode(error ? c10::cuda::SyncDebugMode::L_ERROR
                                                         : c10::cuda::SyncDebugMode::L_DISABLED);
#endif
  }
  bool on_;
};

}  // namespace

void Trainer::train_step(int64_t step) {
  const int64_t tokens_per_step = cfg_.batch_size * cfg_.seq_len;
  // Test only: any host sync inside the step body raises (the first step may initialise).
  SyncCheck sync_check(cfg_.debug_sync_check && step > start_step_ && ctx_.device.is_cuda());
  comm_->set_step(step + 1);
  const double sent_before = bytes_sent();
  timer_->start_step();
  data::Batch batch = loader_->next();
  auto tokens = upload(batch);
  timer_->mark(Phase::kData);

  reducer_->zero_grad();
  for (int64_t m = 0; m < accum_; ++m) {
    auto x = tokens.slice(0, m * micro_, (m + 1) * micro_);
    auto [inputs, targets] = my_tokens(x);
    reducer_->begin_backward(/*sync=*/m == accum_ - 1);
    torch::Tensor loss_sum;
    {
      AutocastScope autocast(cfg_.precision == Precision::kBf16);
      auto logits = model_->forward(inputs);
      loss_sum = token_loss_sum(logits.to(torch::kFloat32), targets);
    }
    if (ctx_.is_root() && m == 0 &&
        std::count(cfg_.debug_nan_steps.begin(), cfg_.debug_nan_steps.end(), step))
      loss_sum = loss_sum * std::numeric_limits<double>::quiet_NaN();  // test-only fault
    (loss_sum / static_cast<double>(tokens_per_step)).backward();
    loss_acc_[0] += loss_sum.detach().to(torch::kDouble);
    loss_acc_[1] += count_targets(targets);
  }
  timer_->mark(Phase::kCompute);
  host_comm_s_ += reducer_->finish();
  timer_->mark(Phase::kComm);

  torch::NoGradGuard no_grad;
  // The global gradient norm: of the whole buffer, or (ZeRO-1) summed over the ranks' shards.
  auto grads = reducer_->flat_grads().narrow(0, reducer_->shard_begin(),
                                             reducer_->shard_end() - reducer_->shard_begin());
  // One reduction pass (grads.pow(2).sum() would first write an 85 MB temporary at the seed's
  // size); squared, so that ZeRO-1 shards can be summed over ranks.
  auto sq = at::linalg_vector_norm(grads, 2).to(torch::kDouble).square();
  if (cfg_.zero == 1) {
    comm_->allreduce_sum_async(sq, "all-reduce of the gradient norm");
    host_comm_s_ += comm_->wait_all();
  }
  gnorm_ = sq.sqrt();
  // A non-finite gradient (every rank sees the same norm) skips the step: weights and optimizer
  // state stay as they were. Decided on the device: found_inf goes to the fused Adam.
  const auto found_inf = gnorm_.isfinite().logical_not().to(torch::kFloat32);
  bad_[0] += found_inf;
  bad_[1] = (bad_[1] + found_inf) * found_inf;  // the current run of non-finite steps
  bad_[2] = torch::maximum(bad_[2], bad_[1]);
  if (cfg_.grad_clip > 0)  // min(1, clip / norm); 1 for a skipped step (its gradient is unused)
    grads.mul_(torch::where(found_inf.to(torch::kBool), torch::ones_like(gnorm_),
                            (cfg_.grad_clip / (gnorm_ + 1e-6)).clamp_max(1.0))
                   .to(torch::kFloat32));
  lr_ = learning_rate(step, cfg_.steps, cfg_.lr, cfg_.min_lr, cfg_.warmup_steps, cfg_.lr_schedule);
  optimizer_->step(lr_, found_inf);
  reducer_->all_gather_params();
  timer_->mark(Phase::kOptimizer);
  sync_check.end();
  step_bytes_ += bytes_sent() - sent_before;
  ++steps_since_log_;
  tokens_done_ += tokens_per_step;
}

// The bad-step counters, read where reading is free (every step on the CPU) or at a sync point
// anyway (report steps on a GPU): a run of --max_bad_steps stops the run at the first read.
void Trainer::check_bad_steps(int64_t step) {
  const auto b = bad_.cpu();
  bad_steps_total_ = static_cast<int64_t>(b[0].item<float>());
  const auto longest = static_cast<int64_t>(b[2].item<float>());
  if (bad_steps_total_ > skipped_reported_)
    LOG_IF(WARNING, ctx_.is_root())
        << "step " << step + 1 << ": " << bad_steps_total_ - skipped_reported_
        << " step(s) with a non-finite gradient norm skipped since the last report ("
        << bad_steps_total_ << " so far, " << static_cast<int64_t>(b[1].item<float>())
        << " in a row now)";
  skipped_reported_ = bad_steps_total_;
  if (longest >= cfg_.max_bad_steps)
    throw RunStopped{kExitFailure, std::to_string(longest) +
                                       " non-finite steps in a row (--max_bad_steps=" +
                                       std::to_string(cfg_.max_bad_steps) + "): stopping"};
  bad_[2].copy_(bad_[1]);  // the longest run since this read
}

// The batch on the device. On a GPU it goes through pinned memory with an asynchronous copy (a
// pageable copy would sync the host with the device every step); the caching host allocator
// recycles the pinned block only once its copy has run.
torch::Tensor Trainer::upload(const data::Batch& batch) const {
  auto host = torch::from_blob(const_cast<int32_t*>(batch.tokens.data()), {batch.rows, batch.cols},
                               torch::kInt32);
  if (!ctx_.device.is_cuda()) return host.to(torch::kLong);
  auto pinned = torch::empty({batch.rows, batch.cols},
                             torch::TensorOptions(torch::kInt32).pinned_memory(true));
  pinned.copy_(host);
  return pinned.to(ctx_.device, /*non_blocking=*/true).to(torch::kLong);
}

// This rank's inputs and targets of windows x (rows of T + 1 tokens): all T positions, or with
// context parallelism its slice [i T/N, (i+1) T/N) of them.
std::pair<torch::Tensor, torch::Tensor> Trainer::my_tokens(const torch::Tensor& x) const {
  const int64_t n = cfg_.context_parallel, len = cfg_.seq_len / n;
  const int64_t begin = (ctx_.rank % n) * len;
  return {x.slice(1, begin, begin + len), x.slice(1, begin + 1, begin + len + 1)};
}

// Bytes this rank has sent over both communicators (counted on the host: no device sync).
double Trainer::bytes_sent() const {
  return comm_->bytes_sent() + (group_comm_ ? group_comm_->bytes_sent() : 0.0);
}

// Sum of the next-token cross entropy over the targets that are not padding.
torch::Tensor Trainer::token_loss_sum(const torch::Tensor& logits,
                                      const torch::Tensor& targets) const {
  namespace F = torch::nn::functional;
  const int64_t V = logits.size(-1);
  const int64_t ignore = cfg_.model.pad_id >= 0 ? cfg_.model.pad_id : -100;
  return F::cross_entropy(logits.reshape({-1, V}), targets.reshape({-1}),
                          F::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(ignore));
}

torch::Tensor Trainer::count_targets(const torch::Tensor& targets) const {
  if (cfg_.model.pad_id < 0) return torch::full({}, static_cast<double>(targets.numel()));
  return targets.ne(cfg_.model.pad_id).sum().to(torch::kDouble);
}

}  // namespace samout::train
