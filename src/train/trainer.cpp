// The training loop of samout_ddp: steps, reports, evaluation, checkpoints and preemption; and
// run_training, which agrees on set-up errors across ranks before any collective (trainer_impl.h).
#include "samout/train/trainer.h"

#include <glog/logging.h>
#include <sys/resource.h>

#include <algorithm>

#include "samout/ckpt/weights_file.h"
#include "samout/common/error.h"
#include "samout/common/strings.h"
#include "samout/dist/agree.h"
#include "samout/dist/checks.h"
#include "samout/train/flags.h"
#include "samout/train/mfu.h"
#include "samout/train/preemption.h"
#include "trainer_impl.h"

#ifdef SAMOUT_HAVE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace samout::train {

namespace {

// Peak memory in MB: what the caching allocator has handed out on this rank's GPU, else the
// process's peak resident memory.
double peak_mem_mb(bool on_gpu) {
#ifdef SAMOUT_HAVE_CUDA
  if (on_gpu) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(c10::cuda::current_device());
    const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    return static_cast<double>(stats.allocated_bytes[aggregate].peak) / (1 << 20);
  }
#endif
  struct rusage u {};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // Linux reports kilobytes
}

}  // namespace

void Trainer::train() {
  const int64_t tokens_per_step = cfg_.batch_size * cfg_.seq_len;
  const auto on_dev = torch::TensorOptions().device(ctx_.device);
  loss_acc_ = torch::zeros({2}, on_dev.dtype(torch::kDouble));
  bad_ = torch::zeros({3}, on_dev.dtype(torch::kFloat32));
  timer_ = std::make_unique<StepTimer>(ctx_.device);
  const auto start = Clock::now();
  window_start_ = start;

  tokens_done_ = start_step_ * tokens_per_step;
  if (start_step_ >= cfg_.steps)
    LOG_IF(INFO, ctx_.is_root()) << "nothing to do: the checkpoint is at step " << start_step_
                                 << " of " << cfg_.steps;
  for (int64_t step = start_step_; step < cfg_.steps; ++step) {
    const bool last = step + 1 == cfg_.steps;
    const bool report_step = (step + 1) % cfg_.log_every == 0 || last;
    train_step(step);
    if (!ctx_.device.is_cuda() || report_step) check_bad_steps(step);
    if (report_step) report(step);
    if (val_loader_ && ((cfg_.eval_every > 0 && (step + 1) % cfg_.eval_every == 0) || last))
      evaluate(step + 1);
    if (agreed_preemption()) {
      const int sig = preemption_signal();
      const std::string when =
          "signal " + std::to_string(sig) + " at step " + std::to_string(step + 1);
      if (!writer_)  // 75 would make a scheduler requeue a job that restarts from step 0, forever
        throw RunStopped{128 + sig, "stopped by " + when +
                                        " with no --ckpt_dir: nothing saved, so not asking to be "
                                        "resumed (exit " +
                                        std::to_string(128 + sig) + ")"};
      save_checkpoint(step + 1, /*async=*/false);
      finish_checkpoints();
      throw RunStopped{kExitTempFail, "preempted by " + when + ": checkpoint saved, resume me"};
    }
    if (!last && cfg_.ckpt_every > 0 && (step + 1) % cfg_.ckpt_every == 0)
      save_checkpoint(step + 1, cfg_.ckpt_async);
  }
  if (last_saved_ != cfg_.steps && cfg_.steps > start_step_)
    save_checkpoint(cfg_.steps, /*async=*/false);
  finish_checkpoints();
  const double wall = seconds_since(start);
  JsonLine fin;
  fin.add("final", true).add("steps", cfg_.steps).add("tokens", tokens_done_);
  fin.add("skipped_steps", bad_steps_total_);
  fin.add("wall_s", wall).add("mean_tokens_per_s", tokens_done_ / std::max(wall, 1e-9));
  fin.add(ctx_.device.is_cuda() ? "peak_mem_mb" : "peak_rss_mb",
          peak_mem_mb(ctx_.device.is_cuda()));
  metrics_->write(fin);
  LOG_IF(INFO, ctx_.is_root()) << "done: " << cfg_.steps << " steps, " << tokens_done_
                               << " tokens in " << format_duration(wall) << ", mean "
                               << static_cast<int64_t>(tokens_done_ / std::max(wall, 1e-9))
                               << " tokens/s";
  if (ctx_.is_root() && !cfg_.save_weights.empty()) {
    ckpt::write_weights(cfg_.save_weights, model_->named_parameters());
    LOG(INFO) << "weights written to " << cfg_.save_weights;
  }
}

// The figures of the steps since the last report: one StepStats, for the log and metrics lines.
void Trainer::report(int64_t step) {
  auto totals = sum_over_ranks(loss_acc_);  // syncs the device: the timings below are real
  const auto phase_ms = timer_->take();
  const double elapsed = seconds_since(window_start_), per = 1.0 / steps_since_log_;
  StepStats st;
  st.step = step + 1;
  st.steps = cfg_.steps;
  st.loss = totals[0].item<double>() / std::max(1.0, totals[1].item<double>());
  st.lr = lr_;
  st.grad_norm = gnorm_.item<double>();
  st.skipped_steps = bad_steps_total_;
  st.tokens_per_s = steps_since_log_ * cfg_.batch_size * cfg_.seq_len / elapsed;
  st.world = ctx_.world;
  st.step_ms = 1000.0 * elapsed * per;
  st.data_ms = phase_ms[0] * per;
  st.compute_ms = phase_ms[1] * per;
  // Communication wait: the GPU's idle time between backward and the optimizer, or the host's
  // wait in MPI on the CPU.
  st.comm_wait_ms = ctx_.device.is_cuda() ? phase_ms[2] * per : 1000.0 * host_comm_s_ * per;
  st.optimizer_ms = phase_ms[3] * per;
  st.comm_mb = step_bytes_ * per / 1e6;
  st.mfu = mfu(st.tokens_per_s / ctx_.world, static_cast<double>(cfg_.model.num_parameters()),
               peak_tflops_);
  st.on_gpu = ctx_.device.is_cuda();
  st.peak_mem_mb = peak_mem_mb(st.on_gpu);
  st.tokens = tokens_done_;
  st.eta_s = (cfg_.steps - step - 1) * elapsed * per;
  metrics_->write(metrics_line(st));
  LOG_IF(INFO, ctx_.is_root()) << log_line(st);
  loss_acc_.zero_();
  host_comm_s_ = 0;
  step_bytes_ = 0;
  steps_since_log_ = 0;
  window_start_ = Clock::now();
}

// A small tensor's sum over ranks, returned on the host (the collective runs on the device the
// communicator serves). Works on a copy: the argument is left as it was.
torch::Tensor Trainer::sum_over_ranks(const torch::Tensor& t) {
  auto dev = t.to(ctx_.device, /*non_blocking=*/false, /*copy=*/true).contiguous();
  comm_->allreduce_sum(dev);
  return dev.cpu();
}

// Copies what this rank must save into host memory; the rest of the save may run in the background.
// The host buffers are reused (the caller has waited for the save reading them), so a save stalls
// training for three memcpys, not for faulting in a quarter gigabyte of fresh pages.
ckpt::Snapshot Trainer::snapshot(int64_t steps_done) {
  torch::NoGradGuard no_grad;
  ckpt::Snapshot s;
  s.state.step = steps_done;
  s.state.cursor = loader_->cursor();
  s.debug_kill_midway = steps_done == cfg_.debug_kill_in_save && ctx_.rank == ctx_.world - 1;
  const auto to_host = [](torch::Tensor& buffer, const torch::Tensor& t) {
    if (!buffer.defined()) buffer = torch::empty({t.numel()}, torch::kFloat32);
    return buffer.copy_(t);
  };
  if (ctx_.is_root()) {
    s.state.run = run_shape();
    s.tokenizer = loader_->tokenizer_model();
    auto rng = at::detail::getDefaultCPUGenerator().get_state();
    s.state.rng_cpu.assign(reinterpret_cast<const char*>(rng.data_ptr<uint8_t>()), rng.numel());
    s.flat_weights = to_host(host_params_, reducer_->flat_params());
    // Each parameter is a view into the flat buffer: its host copy is the same view of the copy.
    for (const auto& p : model_->named_parameters())
      s.weights.emplace_back(p.key(),
                             host_params_.narrow(0, p.value().storage_offset(), p.value().numel())
                                 .view(p.value().sizes()));
  }
  if (cfg_.zero == 1 || ctx_.is_root()) {  // without ZeRO every rank holds the same moments
    s.opt_total = reducer_->numel();
    s.opt_begin = reducer_->shard_begin();
    s.opt_end = reducer_->shard_end();
    s.opt_steps = optimizer_->steps_taken();
    s.exp_avg = to_host(host_m_, optimizer_->exp_avg());
    s.exp_avg_sq = to_host(host_v_, optimizer_->exp_avg_sq());
  }
  return s;
}

void Trainer::save_checkpoint(int64_t steps_done, bool async) {
  if (!writer_) return;
  writer_->wait();  // the previous save is done with the host buffers
  const auto t0 = Clock::now();
  writer_->save(snapshot(steps_done), async);
  LOG_IF(INFO, ctx_.is_root()) << "checkpoint at step " << steps_done << ": training paused "
                               << 1000 * seconds_since(t0) << " ms"
                               << (async ? " (writing in the background)" : "");
  last_saved_ = steps_done;
}

// Ranks agree on a preemption request at step boundaries (the signal may reach them apart).
bool Trainer::agreed_preemption() {
  const int mine = preemption_signal() != 0 ? 1 : 0;
  return (ctx_.world > 1 ? dist::max_over_ranks(mine) : mine) != 0;
}

void Trainer::finish_checkpoints() {
  if (writer_) writer_->wait();
  dist::barrier();  // rank 0's publish of the last checkpoint is complete for everyone
}

int run_training(TrainConfig cfg, const dist::DistContext& ctx) {
  Trainer trainer(std::move(cfg), ctx);
  // Setup errors are the user's: agreed on before any collective, so that every rank exits 2 with
  // one line instead of the healthy ranks waiting for the failed one.
  std::string error;
  try {
    trainer.setup();
  } catch (const UsageError& e) {
    error = e.what();
  }
  if (!agree_no_error(ctx, error, "samout_ddp")) return kExitUsage;
  install_preemption_handlers();
  try {
    trainer.connect();
    trainer.train();
  } catch (const RunStopped& stop) {
    if (ctx.is_root()) LOG(WARNING) << stop.message;
    return stop.exit_code;
  } catch (const std::exception& e) {
    std::string what = e.what();
    dist::abort_job("training failed: " + first_line(what));
  }
  return kExitOk;
}

}  // namespace samout::train
