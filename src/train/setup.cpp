// Trainer set-up: everything checked against the world and the corpus before any collective, then
// the communicators, the gradient reducer and the optimizer (see trainer_impl.h).
// First: torch's headers define a LOG of their own, which glog's (included after) replaces.
#include "trainer_impl.h"

#include <ATen/Parallel.h>
#include <glog/logging.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "samout/ckpt/weights_file.h"
#include "samout/common/error.h"
#include "samout/common/file_checks.h"
#include "samout/dist/agree.h"
#include "samout/train/cpu_memory.h"
#include "samout/train/mfu.h"

#ifdef SAMOUT_HAVE_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace samout::train {

void Trainer::setup() {
  const int64_t G = cfg_.batch_size, N = cfg_.context_parallel;
  require(ctx_.world % N == 0, "--context_parallel=" + std::to_string(N) +
                                   " does not divide the world size " + std::to_string(ctx_.world));
  require(cfg_.seq_len % N == 0, "--context_parallel=" + std::to_string(N) +
                                     " does not divide --seq_len=" + std::to_string(cfg_.seq_len));
  // Data-parallel ranks: each group of N consecutive ranks shares its sequences.
  const int64_t W = ctx_.world / N;
  const std::string world_name = N == 1 ? "the world size " + std::to_string(W)
                                        : "the data-parallel size " + std::to_string(W) +
                                              " (world " + std::to_string(ctx_.world) +
                                              " / --context_parallel=" + std::to_string(N) + ")";
  require(G % W == 0, "--batch_size=" + std::to_string(G) + " is not divisible by " + world_name);
  const int64_t local_rows = G / W;
  micro_ = cfg_.micro_batch > 0 ? cfg_.micro_batch : local_rows;
  require(local_rows % micro_ == 0, "--batch_size=" + std::to_string(G) + " is not divisible by " +
                                        (N == 1 ? "world size " + std::to_string(W) : world_name) +
                                        " x --micro_batch=" + std::to_string(micro_));
  accum_ = local_rows / micro_;
  require(cfg_.precision != Precision::kBf16 || ctx_.device.is_cuda(),
          "--precision=bf16 is not supported on the CPU; use --precision=fp32 or a GPU");
  choose_peak();
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(cfg_.threads > 0 ? cfg_.threads : std::max(1, hw / ctx_.local_world));
  // Before the model and the flat buffers are allocated.
  if (!ctx_.device.is_cuda()) keep_freed_cpu_memory();

  data::LoaderConfig lc;
  lc.spec = cfg_.data;
  lc.seq_len = cfg_.seq_len;
  lc.global_batch = G;
  lc.rank = ctx_.rank / static_cast<int>(N);  // a context-parallel group reads the same rows
  lc.world = static_cast<int>(W);
  lc.seed = cfg_.seed;
  lc.prefetch = cfg_.prefetch;
  lc.vocab_size = cfg_.model.vocab_size;
  loader_ = data::Loader::open(lc);
  if (cfg_.model.vocab_size == 0) cfg_.model.vocab_size = loader_->vocab_size();
  require(cfg_.model.vocab_size == loader_->vocab_size(),
          "--vocab_size=" + std::to_string(cfg_.model.vocab_size) + " does not match the corpus " +
              cfg_.data + " (vocabulary " + std::to_string(loader_->vocab_size()) + ")");
  cfg_.model.pad_id = loader_->pad_id();
  if (!cfg_.val_data.empty()) {
    lc.spec = cfg_.val_data;
    lc.prefetch = 0;
    lc.vocab_size = cfg_.model.vocab_size;
    val_loader_ = data::Loader::open(lc);
    data::require_same_tokenizer(*loader_, *val_loader_);
    eval_batches_ = std::min<int64_t>(cfg_.eval_batches, val_loader_->steps_per_epoch());
  }
  cfg_.model.validate();

  torch::manual_seed(cfg_.seed);
  model_ = model::SamOut(cfg_.model);
  if (!cfg_.init_from.empty()) {
    // By type and size before reading: a directory or /dev/zero is not read until memory runs out.
    check_input_file("init_from", cfg_.init_from, 8 * cfg_.model.num_parameters() + (64 << 20));
    ckpt::load_into(*model_, ckpt::read_weights(cfg_.init_from), cfg_.init_from);
  }
  model_->to(ctx_.device);
  model_->set_check_tokens(false);  // the loader has checked every id against the vocabulary
  if (ctx_.is_root() && !cfg_.save_weights.empty()) {
    // Fail now, not after hours of training, when the output cannot be written: a directory,
    // no space for it, no permission.
    check_output_file("save_weights", cfg_.save_weights,
                      4 * cfg_.model.num_parameters() + (1 << 20), /*folder_must_exist=*/false);
    std::error_code ec;
    const auto parent = std::filesystem::path(cfg_.save_weights).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    const std::string probe = cfg_.save_weights + ".tmp";
    require(std::ofstream(probe).is_open(), "--save_weights: cannot write " + cfg_.save_weights);
    std::remove(probe.c_str());
  }
  if (cfg_.resume != "auto" && cfg_.resume != "never")  // before anything is created
    require(std::filesystem::is_directory(cfg_.resume),
            "--resume=" + cfg_.resume + ": no such checkpoint folder");
  if (!cfg_.ckpt_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(cfg_.ckpt_dir, ec);
    require(std::filesystem::is_directory(cfg_.ckpt_dir),
            "--ckpt_dir: cannot create " + cfg_.ckpt_dir + (ec ? " (" + ec.message() + ")" : ""));
    if (ctx_.is_root()) {
      // One job per folder, and a writable one: checked now, not at the first save. Only then
      // may this job clear the unfinished saves it finds (they are not another job's).
      dir_lock_ = std::make_unique<ckpt::DirLock>(cfg_.ckpt_dir);
      ckpt::CheckpointWriter::remove_partial(cfg_.ckpt_dir);
    }
  }
  if (ctx_.is_root()) choose_resume();
  metrics_ = std::make_unique<MetricsFile>(ctx_.is_root() ? cfg_.metrics_file : "");
}

// The peak MFU is measured against: --peak_tflops, else the card's dense peak for the precision
// in use (bf16 autocast; fp32 on TF32 tensor cores with --tf32; plain fp32).
void Trainer::choose_peak() {
  peak_tflops_ = cfg_.peak_tflops;
#ifdef SAMOUT_HAVE_CUDA
  if (!ctx_.device.is_cuda()) return;
  at::globalContext().setAllowTF32CuBLAS(cfg_.tf32);
  at::globalContext().setAllowTF32CuDNN(cfg_.tf32);
  if (peak_tflops_ > 0) return;
  const std::string name = at::cuda::getDeviceProperties(ctx_.device.index())->name;
  const MathMode mode = cfg_.precision == Precision::kBf16 ? MathMode::kBf16
                        : cfg_.tf32                        ? MathMode::kTf32
                                                           : MathMode::kFp32;
  peak_tflops_ = peak_tflops(name, mode);
  LOG_IF(WARNING, ctx_.is_root() && peak_tflops_ <= 0)
      << "no peak FLOP/s known for '" << name << "': MFU is not reported (set --peak_tflops)";
#endif
}

// Rank 0 picks the checkpoint to resume from and checks that it fits this run, all of it, so that
// a bad checkpoint is the user's error (exit 2, naming the file) found before any collective,
// not a failure halfway through loading it; connect() tells the other ranks.
void Trainer::choose_resume() {
  if (cfg_.resume == "never" || (cfg_.resume == "auto" && cfg_.ckpt_dir.empty())) return;
  if (cfg_.resume == "auto") {
    try {
      resume_path_ = ckpt::resolve_checkpoint(cfg_.ckpt_dir, "--ckpt_dir", /*none_ok=*/true);
    } catch (const UsageError& e) {
      throw UsageError("--resume=auto: " + std::string(e.what()) +
                       ", or start afresh with --resume=never");
    }
  } else {
    resume_path_ = ckpt::resolve_checkpoint(cfg_.resume, "--resume");
  }
  if (!resume_path_.empty()) check_checkpoint(resume_path_);
}

// Everything resume_from() will read, read now: the state, the weights' shapes, the optimizer
// shards' coverage. A checksum only proves the files are what was written.
void Trainer::check_checkpoint(const std::string& path) {
  const std::string why = ckpt::read_state(path).run.mismatch(run_shape());
  require(why.empty(), "checkpoint " + path + " was made with " + why);
  // Loads into this rank's model, which resume_from() overwrites with the same values anyway.
  ckpt::load_into(*model_, ckpt::read_weights(path + "/model.h5"), path + "/model.h5");
  const int64_t total = cfg_.model.num_parameters();
  auto m = torch::empty({total}, torch::kFloat32), v = torch::empty({total}, torch::kFloat32);
  const int64_t steps = ckpt::read_optimizer_range(path, total, 0, total, m, v);
  require(steps >= 0, path + ": the optimizer shards hold a negative step count");
}

// The flags a checkpoint must share with the run that resumes it: the model's shape and what
// decides the sequence of global batches. (Learning rate, steps, world size may change.)
ckpt::RunShape Trainer::run_shape() const {
  ckpt::RunShape r;
  r.vocab_size = cfg_.model.vocab_size;
  r.hidden = cfg_.model.hidden;
  r.layers = cfg_.model.layers;
  r.heads = cfg_.model.heads;
  r.seq_len = cfg_.seq_len;
  r.batch_size = cfg_.batch_size;
  r.seed = cfg_.seed;
  r.data = cfg_.data;
  r.optimizer = to_string(cfg_.optimizer);
  r.zero = cfg_.zero;
  r.pad_id = cfg_.model.pad_id;
  return r;
}

void Trainer::connect() {
  comm_ = dist::make_communicator(ctx_, cfg_.comm_timeout_s);
  if (cfg_.context_parallel > 1) {
    group_comm_ = dist::make_group_communicator(ctx_, cfg_.context_parallel, cfg_.comm_timeout_s);
    auto group = std::make_shared<ops::ContextGroup>();
    group->index = ctx_.rank % cfg_.context_parallel;
    group->size = cfg_.context_parallel;
    group->all_gather = [this, index = group->index, n = group->size](const torch::Tensor& x) {
      auto all = torch::empty({n, x.size(0), x.size(1)}, x.options());
      all[index].copy_(x);
      group_comm_->all_gather(all.view({-1}));
      return all;
    };
    model_->set_context_parallel(group);
  }
  std::vector<torch::Tensor> params;
  for (auto& p : model_->parameters()) params.push_back(p);
  reducer_ = std::make_unique<dist::GradReducer>(params, *comm_, cfg_.bucket_mb << 20, ctx_.rank,
                                                 cfg_.zero == 1);
  // The gate's group all-gathers run inside backward: buckets launched then could interleave with
  // them differently on different ranks, which NCCL may deadlock on (grad_reducer.h).
  reducer_->hold_buckets_until_finish(cfg_.context_parallel > 1);
  reducer_->broadcast_params(0);  // every rank starts from rank 0's weights
  const AdamOptions adam{cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay,
                         /*decoupled=*/cfg_.optimizer == Optimizer::kAdamW};
  optimizer_ = std::make_unique<FlatAdam>(reducer_->flat_params(), reducer_->flat_grads(),
                                          reducer_->shard_begin(), reducer_->shard_end(), adam);
  if (!cfg_.ckpt_dir.empty())
    writer_ = std::make_unique<ckpt::CheckpointWriter>(cfg_.ckpt_dir, cfg_.keep_ckpts, ctx_.rank,
                                                       ctx_.world);
  resume_from(dist::broadcast_from_root(resume_path_));
  LOG_IF(INFO, ctx_.is_root())
      << cfg_.model.describe() << ", " << cfg_.model.num_parameters() << " parameters; world "
      << ctx_.world << " on " << ctx_.device
      << (cfg_.context_parallel > 1
              ? " (" + std::to_string(ctx_.world / cfg_.context_parallel) + " data-parallel x " +
                    std::to_string(cfg_.context_parallel) + " context-parallel: " +
                    std::to_string(cfg_.seq_len / cfg_.context_parallel) + " tokens per rank)"
              : std::string())
      << ", global batch " << cfg_.batch_size << " x " << cfg_.seq_len << " tokens, " << accum_
      << " micro-step(s) of " << micro_ << " per rank, " << at::get_num_threads()
      << " threads per rank, " << reducer_->num_buckets() << " gradient buckets"
      << (cfg_.context_parallel > 1 ? " (launched after backward)" : "") << ", " << cfg_.steps
      << " steps";
}

void Trainer::resume_from(const std::string& path) {
  if (path.empty()) return;
  const auto t0 = Clock::now();
  const auto state = ckpt::read_state(path);
  ckpt::load_into(*model_, ckpt::read_weights(path + "/model.h5"), path + "/model.h5");
  const int64_t b = reducer_->shard_begin(), e = reducer_->shard_end();
  auto m = torch::zeros({e - b}, torch::kFloat32), v = torch::zeros({e - b}, torch::kFloat32);
  const int64_t opt_steps = ckpt::read_optimizer_range(path, reducer_->numel(), b, e, m, v);
  optimizer_->set_state(m.to(ctx_.device), v.to(ctx_.device), opt_steps);
  start_step_ = state.step;
  loader_->seek(state.cursor);
  if (!state.rng_cpu.empty()) {
    auto rng = torch::from_blob(const_cast<char*>(state.rng_cpu.data()),
                                {static_cast<int64_t>(state.rng_cpu.size())}, torch::kUInt8);
    auto gen = at::detail::getDefaultCPUGenerator();  // a handle on the global generator
    gen.set_state(rng);
  }
  LOG_IF(INFO, ctx_.is_root()) << "resumed from " << path << " at step " << start_step_
                               << " (saved by " << state.world << " ranks), loaded in "
                               << seconds_since(t0) << " s";
}

}  // namespace samout::train
