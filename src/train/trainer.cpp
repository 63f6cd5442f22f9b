#include "samout/train/trainer.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <glog/logging.h>
#include <mpi.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <optional>
#include <thread>

#include "samout/ckpt/checkpoint.h"
#include "samout/ckpt/dir_lock.h"
#include "samout/ckpt/weights_file.h"
#include "samout/common/error.h"
#include "samout/common/file_checks.h"
#include "samout/data/loader.h"
#include "samout/dist/checks.h"
#include "samout/dist/communicator.h"
#include "samout/dist/grad_reducer.h"
#include "samout/model/samout.h"
#include "samout/ops/cross_entropy.h"
#include "samout/train/cpu_allocator.h"
#include "samout/train/metrics.h"
#include "samout/train/mfu.h"
#include "samout/train/optimizer.h"
#include "samout/train/preemption.h"
#include "samout/train/step_timer.h"

#ifdef SAMOUT_HAVE_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace samout::train {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

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

// Peak memory the caching allocator has handed out on this rank's GPU, in MB.
double peak_device_mb() {
#ifdef SAMOUT_HAVE_CUDA
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(c10::cuda::current_device());
  return static_cast<double>(
             stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
                 .peak) /
         (1 << 20);
#else
  return 0.0;
#endif
}

// Peak resident memory of this process (the CPU's counterpart of peak_device_mb), in MB.
double peak_rss_mb() {
  struct rusage u {};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // Linux reports kilobytes
}

// The run stopped for a reason every rank agrees on (too many bad steps, preemption): not a crash.
struct RunStopped {
  int exit_code;
  std::string message;
};

class Trainer {
 public:
  Trainer(TrainConfig cfg, const dist::DistContext& ctx) : cfg_(std::move(cfg)), ctx_(ctx) {}

  // Everything that can fail because of the user's input happens here, before any collective.
  void setup() {
    const int64_t G = cfg_.batch_size, N = cfg_.context_parallel;
    require(ctx_.world % N == 0, "--context_parallel=" + std::to_string(N) +
                                     " does not divide the world size " +
                                     std::to_string(ctx_.world));
    require(cfg_.seq_len % N == 0,
            "--context_parallel=" + std::to_string(N) +
                " does not divide --seq_len=" + std::to_string(cfg_.seq_len));
    // Data-parallel ranks: each group of N consecutive ranks shares its sequences.
    const int64_t W = ctx_.world / N;
    const std::string world_name = N == 1 ? "the world size " + std::to_string(W)
                                          : "the data-parallel size " + std::to_string(W) +
                                                " (world " + std::to_string(ctx_.world) +
                                                " / --context_parallel=" + std::to_string(N) + ")";
    require(G % W == 0, "--batch_size=" + std::to_string(G) + " is not divisible by " + world_name);
    local_rows_ = G / W;
    micro_ = cfg_.micro_batch > 0 ? cfg_.micro_batch : local_rows_;
    require(local_rows_ % micro_ == 0,
            "--batch_size=" + std::to_string(G) + " is not divisible by " +
                (N == 1 ? "world size " + std::to_string(W) : world_name) +
                " x --micro_batch=" + std::to_string(micro_));
    accum_ = local_rows_ / micro_;
    require(cfg_.precision != "bf16" || ctx_.device.is_cuda(),
            "--precision=bf16 is not supported on the CPU; use --precision=fp32 or a GPU");
    choose_peak();
    const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    at::set_num_threads(cfg_.threads > 0 ? cfg_.threads : std::max(1, hw / ctx_.local_world));
    // Before the model and the flat buffers exist, so that they too come from it.
    if (!ctx_.device.is_cuda())
      install_caching_cpu_allocator(static_cast<size_t>(cfg_.cpu_cache_mb));

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
            "--vocab_size=" + std::to_string(cfg_.model.vocab_size) +
                " does not match the corpus " + cfg_.data + " (vocabulary " +
                std::to_string(loader_->vocab_size()) + ")");
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
      std::FILE* f = std::fopen((cfg_.save_weights + ".tmp").c_str(), "w");
      require(f != nullptr, "--save_weights: cannot write " + cfg_.save_weights);
      std::fclose(f);
      std::remove((cfg_.save_weights + ".tmp").c_str());
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
  void choose_peak() {
    peak_tflops_ = cfg_.peak_tflops;
#ifdef SAMOUT_HAVE_CUDA
    if (!ctx_.device.is_cuda()) return;
    at::globalContext().setAllowTF32CuBLAS(cfg_.tf32);
    at::globalContext().setAllowTF32CuDNN(cfg_.tf32);
    if (peak_tflops_ > 0) return;
    const std::string name = at::cuda::getDeviceProperties(ctx_.device.index())->name;
    const MathMode mode = cfg_.precision == "bf16" ? MathMode::kBf16
                          : cfg_.tf32              ? MathMode::kTf32
                                                   : MathMode::kFp32;
    peak_tflops_ = peak_tflops(name, mode);
    LOG_IF(WARNING, ctx_.is_root() && peak_tflops_ <= 0)
        << "no peak FLOP/s known for '" << name << "': MFU is not reported (set --peak_tflops)";
#endif
  }

  // Rank 0 picks the checkpoint to resume from and checks that it fits this run, all of it, so that
  // a bad checkpoint is the user's error (exit 2, naming the file) found before any collective,
  // not a failure halfway through loading it; connect() tells the other ranks.
  void choose_resume() {
    if (cfg_.resume == "never") return;
    if (cfg_.resume == "auto") {
      if (cfg_.ckpt_dir.empty()) return;
      std::vector<std::string> skipped;
      resume_path_ = ckpt::find_latest_valid(cfg_.ckpt_dir, &skipped);
      for (const auto& s : skipped) LOG(WARNING) << "skipping checkpoint " << s;
      if (resume_path_.empty() && !skipped.empty()) {
        std::string all;
        for (const auto& s : skipped) all += (all.empty() ? "" : "; ") + s;
        throw UsageError("--resume=auto: no checkpoint in " + cfg_.ckpt_dir + " verifies (" + all +
                         "); repair or move them, or start afresh with --resume=never");
      }
    } else {
      const std::string why = ckpt::verify(cfg_.resume);
      require(why.empty(), "--resume=" + cfg_.resume + ": " + why);
      resume_path_ = cfg_.resume;
    }
    if (resume_path_.empty()) return;
    check_checkpoint(resume_path_);
  }

  // Everything resume_from() will read, read now: the state, the weights' shapes, the optimizer
  // shards' coverage. A checksum only proves the files are what was written.
  void check_checkpoint(const std::string& path) {
    const std::string state_file = path + "/state.json";
    const auto state = ckpt::read_state(path);
    try {
      const int64_t step = state.at("step").get<int64_t>();
      require(step >= 0, state_file + ": step " + std::to_string(step) + " is negative");
      const int64_t epoch = state.at("cursor").at("epoch").get<int64_t>();
      const int64_t in_epoch = state.at("cursor").at("step").get<int64_t>();
      require(epoch >= 0 && in_epoch >= 0, state_file + ": negative data cursor");
      const std::string rng = state.value("rng_cpu", std::string());
      require(rng.size() % 2 == 0 &&
                  rng.find_first_not_of("0123456789abcdefABCDEF") == std::string::npos,
              state_file + ": rng_cpu is not a hex string");
      const auto& run = state.at("run");
      const auto want = run_shape();
      for (auto& [k, v] : want.items())
        require(run.contains(k) && run[k] == v, "checkpoint " + path + " was made with " + k + "=" +
                                                    (run.contains(k) ? run[k].dump() : "?") +
                                                    ", this run has " + k + "=" + v.dump());
    } catch (const nlohmann::json::exception& e) {
      throw UsageError(state_file + ": malformed (" + std::string(e.what()) + ")");
    }
    // Loads into this rank's model, which resume_from() overwrites with the same values anyway.
    ckpt::load_into(*model_, ckpt::read_weights(path + "/model.h5"), path + "/model.h5");
    const int64_t total = cfg_.model.num_parameters();
    auto m = torch::empty({total}, torch::kFloat32), v = torch::empty({total}, torch::kFloat32);
    const int64_t steps = ckpt::read_optimizer_range(path, total, 0, total, m, v);
    require(steps >= 0, path + ": the optimizer shards hold a negative step count");
  }

  // The flags a checkpoint must share with the run that resumes it: the model's shape and what
  // decides the sequence of global batches. (Learning rate, steps, world size may change.)
  nlohmann::json run_shape() const {
    return {{"vocab_size", cfg_.model.vocab_size},
            {"hidden", cfg_.model.hidden},
            {"layers", cfg_.model.layers},
            {"heads", cfg_.model.heads},
            {"seq_len", cfg_.seq_len},
            {"batch_size", cfg_.batch_size},
            {"seed", cfg_.seed},
            {"data", cfg_.data},
            {"optimizer", cfg_.optimizer}};  // Adam's moments mean something else to AdamW
  }

  // Collectives start here: every rank passed setup().
  void connect() {
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
    reducer_->broadcast_params(0);  // every rank starts from rank 0's weights
    AdamOptions ao;
    ao.beta1 = cfg_.beta1;
    ao.beta2 = cfg_.beta2;
    ao.eps = cfg_.eps;
    ao.weight_decay = cfg_.weight_decay;
    ao.decoupled = cfg_.optimizer == "adamw";
    optimizer_ = std::make_unique<FlatAdam>(reducer_->flat_params(), reducer_->flat_grads(),
                                            reducer_->shard_begin(), reducer_->shard_end(), ao);
    if (!cfg_.ckpt_dir.empty())
      writer_ = std::make_unique<ckpt::CheckpointWriter>(cfg_.ckpt_dir, cfg_.keep_ckpts, ctx_.rank,
                                                         ctx_.world);
    resume_from(broadcast_string(resume_path_));
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
        << " threads per rank, " << reducer_->num_buckets() << " gradient buckets, " << cfg_.steps
        << " steps";
  }

  static std::string broadcast_string(std::string s) {
    int64_t n = static_cast<int64_t>(s.size());
    SAMOUT_MPI_CHECK(MPI_Bcast(&n, 1, MPI_INT64_T, 0, MPI_COMM_WORLD));
    s.resize(n);
    SAMOUT_MPI_CHECK(MPI_Bcast(s.data(), static_cast<int>(n), MPI_CHAR, 0, MPI_COMM_WORLD));
    return s;
  }

  void resume_from(const std::string& path) {
    if (path.empty()) return;
    const auto t0 = Clock::now();
    const auto state = ckpt::read_state(path);
    ckpt::load_into(*model_, ckpt::read_weights(path + "/model.h5"), path + "/model.h5");
    const int64_t b = reducer_->shard_begin(), e = reducer_->shard_end();
    auto m = torch::zeros({e - b}, torch::kFloat32), v = torch::zeros({e - b}, torch::kFloat32);
    const int64_t opt_steps = ckpt::read_optimizer_range(path, reducer_->numel(), b, e, m, v);
    optimizer_->set_state(m.to(ctx_.device), v.to(ctx_.device), opt_steps);
    start_step_ = state["step"].get<int64_t>();
    loader_->seek(
        {state["cursor"]["epoch"].get<int64_t>(), state["cursor"]["step"].get<int64_t>()});
    const std::string rng_hex = state.value("rng_cpu", std::string());
    if (!rng_hex.empty()) {
      auto rng = torch::empty({static_cast<int64_t>(rng_hex.size() / 2)}, torch::kUInt8);
      for (int64_t i = 0; i < rng.numel(); ++i)
        rng.data_ptr<uint8_t>()[i] =
            static_cast<uint8_t>(std::stoi(rng_hex.substr(2 * i, 2), nullptr, 16));
      auto gen = at::detail::getDefaultCPUGenerator();
      gen.set_state(rng);
    }
    LOG_IF(INFO, ctx_.is_root()) << "resumed from " << path << " at step " << start_step_
                                 << " (saved by " << state.value("world", 0)
                                 << " ranks), loaded in " << seconds_since(t0) << " s";
  }

  // Copies what this rank must save into host memory; the rest of the save can run in the
  // background while training goes on. The host buffers are allocated once and reused, so a save
  // stalls training for three memcpys, not for faulting in a quarter gigabyte of fresh pages.
  // (The caller has waited for the previous save, which was reading these buffers.)
  ckpt::Snapshot snapshot(int64_t steps_done) {
    torch::NoGradGuard no_grad;
    ckpt::Snapshot s;
    s.step = steps_done;
    s.cursor = loader_->cursor();
    s.debug_kill_midway = steps_done == cfg_.debug_kill_in_save && ctx_.rank == ctx_.world - 1;
    const auto flat = reducer_->flat_params();
    if (ctx_.is_root()) {
      s.run = run_shape();
      s.run["zero"] = cfg_.zero;
      s.run["pad_id"] = cfg_.model.pad_id;
      s.tokenizer = loader_->tokenizer_model();
      auto rng = at::detail::getDefaultCPUGenerator().get_state();
      s.rng_state.assign(reinterpret_cast<const char*>(rng.data_ptr<uint8_t>()), rng.numel());
      if (!host_params_.defined()) host_params_ = torch::empty({flat.numel()}, torch::kFloat32);
      host_params_.copy_(flat);
      s.flat_weights = host_params_;
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
      if (!host_m_.defined()) {
        host_m_ = torch::empty({s.opt_end - s.opt_begin}, torch::kFloat32);
        host_v_ = torch::empty({s.opt_end - s.opt_begin}, torch::kFloat32);
      }
      host_m_.copy_(optimizer_->exp_avg());
      host_v_.copy_(optimizer_->exp_avg_sq());
      s.exp_avg = host_m_;
      s.exp_avg_sq = host_v_;
    }
    return s;
  }

  void save_checkpoint(int64_t steps_done, bool async) {
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
  bool agreed_preemption() {
    int mine = preemption_requested() ? 1 : 0, any = mine;
    if (ctx_.world > 1)
      SAMOUT_MPI_CHECK(MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
    return any != 0;
  }

  void finish_checkpoints() {
    if (writer_) writer_->wait();
    dist::barrier();  // rank 0's publish of the last checkpoint is complete for everyone
  }

  // The batch on the device. On a GPU it goes through pinned memory with an asynchronous copy (a
  // pageable copy would sync the host with the device every step); the caching host allocator
  // recycles the pinned block only once its copy has run.
  torch::Tensor upload(const data::Batch& batch) const {
    auto host = torch::from_blob(const_cast<int32_t*>(batch.tokens.data()),
                                 {batch.rows, batch.cols}, torch::kInt32);
    if (!ctx_.device.is_cuda()) return host.to(torch::kLong);
    auto pinned = torch::empty({batch.rows, batch.cols},
                               torch::TensorOptions(torch::kInt32).pinned_memory(true));
    pinned.copy_(host);
    return pinned.to(ctx_.device, /*non_blocking=*/true).to(torch::kLong);
  }

  void train() {
    const int64_t G = cfg_.batch_size, T = cfg_.seq_len;
    const int64_t tokens_per_step = G * T;
    const bool bf16 = cfg_.precision == "bf16";
    const auto dev = ctx_.device;
    const auto on_dev = torch::TensorOptions().device(dev);
    // Loss sum and target count since the last log line, the skipped steps and the current run of
    // non-finite steps: kept on the device, read only at a sync point (no per-step sync on a GPU).
    auto loss_acc = torch::zeros({2}, on_dev.dtype(torch::kDouble));
    auto bad = torch::zeros({3}, on_dev.dtype(torch::kFloat32));  // [skipped, run, longest run]
    torch::Tensor gnorm;
    StepTimer timer(dev);
    double host_comm_s = 0;
    int64_t steps_since_log = 0, skipped_reported = bad_steps_total_;
    const auto start = Clock::now();
    auto window_start = start;

    tokens_done_ = start_step_ * tokens_per_step;
    if (start_step_ >= cfg_.steps)
      LOG_IF(INFO, ctx_.is_root())
          << "nothing to do: the checkpoint is at step " << start_step_ << " of " << cfg_.steps;
    for (int64_t step = start_step_; step < cfg_.steps; ++step) {
      const bool last = step + 1 == cfg_.steps;
      const bool log_step = (step + 1) % cfg_.log_every == 0 || last;
      // Test only: any host sync inside the step body raises (the first step may initialise).
      SyncCheck sync_check(cfg_.debug_sync_check && step > start_step_ && dev.is_cuda());
      comm_->set_step(step + 1);
      timer.start_step();
      data::Batch batch = loader_->next();
      auto tokens = upload(batch);
      timer.mark(Phase::kData);

      reducer_->zero_grad();
      for (int64_t m = 0; m < accum_; ++m) {
        auto x = tokens.slice(0, m * micro_, (m + 1) * micro_);
        auto [inputs, targets] = my_tokens(x);
        reducer_->begin_backward(/*sync=*/m == accum_ - 1);
        torch::Tensor loss_sum;
        {
          AutocastScope autocast(bf16);
          auto logits = model_->forward(inputs);
          loss_sum = token_loss_sum(logits.to(torch::kFloat32), targets);
        }
        if (ctx_.is_root() && m == 0 &&
            std::count(cfg_.debug_nan_steps.begin(), cfg_.debug_nan_steps.end(), step))
          loss_sum = loss_sum * std::numeric_limits<double>::quiet_NaN();  // test-only fault
        (loss_sum / static_cast<double>(tokens_per_step)).backward();
        loss_acc[0] += loss_sum.detach().to(torch::kDouble);
        loss_acc[1] += count_targets(targets);
      }
      timer.mark(Phase::kCompute);
      host_comm_s += reducer_->finish();
      timer.mark(Phase::kComm);

      torch::NoGradGuard no_grad;
      // The global gradient norm: of the whole buffer, or (ZeRO-1) summed over the ranks' shards.
      auto grads = reducer_->flat_grads().narrow(0, reducer_->shard_begin(),
                                                 reducer_->shard_end() - reducer_->shard_begin());
      // One reduction pass (grads.pow(2).sum() would first write an 85 MB temporary at the seed's
      // size); squared, so that ZeRO-1 shards can be summed over ranks.
      auto sq = at::linalg_vector_norm(grads, 2).to(torch::kDouble).square();
      if (cfg_.zero == 1) {
        comm_->allreduce_sum_async(sq, "all-reduce of the gradient norm");
        host_comm_s += comm_->wait_all();
      }
      gnorm = sq.sqrt();
      // A non-finite gradient (every rank sees the same norm) skips the step: weights and optimizer
      // state stay as they were. Decided on the device: found_inf goes to the fused Adam.
      const auto found_inf = gnorm.isfinite().logical_not().to(torch::kFloat32);
      bad[0] += found_inf;
      bad[1] = (bad[1] + found_inf) * found_inf;  // the current run of non-finite steps
      bad[2] = torch::maximum(bad[2], bad[1]);
      if (cfg_.grad_clip > 0)  // min(1, clip / norm); 1 for a skipped step (its gradient is unused)
        grads.mul_(torch::where(found_inf.to(torch::kBool), torch::ones_like(gnorm),
                                (cfg_.grad_clip / (gnorm + 1e-6)).clamp_max(1.0))
                       .to(torch::kFloat32));
      const double lr = learning_rate(step, cfg_.steps, cfg_.lr, cfg_.min_lr, cfg_.warmup_steps,
                                      cfg_.lr_schedule);
      optimizer_->step(lr, found_inf);
      reducer_->all_gather_params();
      timer.mark(Phase::kOptimizer);
      sync_check.end();
      ++steps_since_log;
      tokens_done_ += tokens_per_step;

      // The bad-step counters are read where reading is free (every step on the CPU) or at a sync
      // point anyway (log steps on a GPU): a run of --max_bad_steps stops the run at the first read.
      if (!dev.is_cuda() || log_step) {
        const auto b = bad.cpu();
        bad_steps_total_ = static_cast<int64_t>(b[0].item<float>());
        const auto longest = static_cast<int64_t>(b[2].item<float>());
        if (bad_steps_total_ > skipped_reported)
          LOG_IF(WARNING, ctx_.is_root())
              << "step " << step + 1 << ": " << bad_steps_total_ - skipped_reported
              << " step(s) with a non-finite gradient norm skipped since the last report ("
              << bad_steps_total_ << " so far, " << static_cast<int64_t>(b[1].item<float>())
              << " in a row now)";
        skipped_reported = bad_steps_total_;
        if (longest >= cfg_.max_bad_steps)
          throw RunStopped{kExitFailure, std::to_string(longest) +
                                             " non-finite steps in a row (--max_bad_steps=" +
                                             std::to_string(cfg_.max_bad_steps) + "): stopping"};
        bad[2].copy_(bad[1]);  // the longest run since this read
      }

      if (log_step) {
        auto totals = sum_over_ranks(loss_acc);  // syncs the device: the timings below are real
        const double loss = totals[0].item<double>() / std::max(1.0, totals[1].item<double>());
        const double gnorm_host = gnorm.item<double>();
        const auto phase_ms = timer.take();
        const double elapsed = seconds_since(window_start);
        const double tps = steps_since_log * tokens_per_step / elapsed;
        const double per = 1.0 / steps_since_log;
        const double eta = (cfg_.steps - step - 1) * elapsed / steps_since_log;
        const double mfu_now =
            mfu(tps / ctx_.world, static_cast<double>(cfg_.model.num_parameters()), peak_tflops_);
        // Communication wait: the GPU's idle time between backward and the optimizer, or the host's
        // wait in MPI on the CPU.
        const double comm_ms = dev.is_cuda() ? phase_ms[2] * per : 1000.0 * host_comm_s * per;
        JsonLine j;
        j.add("step", step + 1).add("loss", loss).add("lr", lr).add("grad_norm", gnorm_host);
        j.add("skipped_steps", bad_steps_total_);
        j.add("tokens_per_s", tps).add("tokens_per_s_per_rank", tps / ctx_.world);
        j.add("step_ms", 1000.0 * elapsed * per).add("data_ms", phase_ms[0] * per);
        j.add("compute_ms", phase_ms[1] * per).add("comm_wait_ms", comm_ms);
        j.add("optimizer_ms", phase_ms[3] * per);
        if (mfu_now > 0) j.add("mfu", mfu_now);
        j.add(dev.is_cuda() ? "peak_mem_mb" : "peak_rss_mb",
              dev.is_cuda() ? peak_device_mb() : peak_rss_mb());
        j.add("tokens", tokens_done_).add("eta_s", eta);
        metrics_->write(j);
        if (ctx_.is_root()) {
          char line[512];
          std::snprintf(
              line, sizeof(line),
              "step %lld/%lld | loss %.4f | lr %.3g | gnorm %.3f | %.0f tok/s (%.0f/rank) | "
              "%.1f ms/step: data %.1f, compute %.1f, comm wait %.1f, optim %.1f%s | ETA %s",
              static_cast<long long>(step + 1), static_cast<long long>(cfg_.steps), loss, lr,
              gnorm_host, tps, tps / ctx_.world, 1000.0 * elapsed * per, phase_ms[0] * per,
              phase_ms[1] * per, comm_ms, phase_ms[3] * per,
              mfu_now > 0 ? (" | MFU " + std::to_string(100 * mfu_now).substr(0, 4) + "%").c_str()
                          : "",
              format_duration(eta).c_str());
          LOG(INFO) << line;
        }
        loss_acc.zero_();
        host_comm_s = 0;
        steps_since_log = 0;
        window_start = Clock::now();
      }
      if (val_loader_ && ((cfg_.eval_every > 0 && (step + 1) % cfg_.eval_every == 0) || last))
        evaluate(step + 1);
      if (agreed_preemption()) {
        const int sig = preemption_signal();
        if (!writer_)  // 75 would make a scheduler requeue a job that restarts from step 0, forever
          throw RunStopped{128 + sig, "stopped by signal " + std::to_string(sig) + " at step " +
                                          std::to_string(step + 1) +
                                          " with no --ckpt_dir: nothing saved, so not asking to be "
                                          "resumed (exit " +
                                          std::to_string(128 + sig) + ")"};
        save_checkpoint(step + 1, /*async=*/false);
        finish_checkpoints();
        throw RunStopped{kExitTempFail, "preempted by signal " + std::to_string(sig) + " at step " +
                                            std::to_string(step + 1) +
                                            ": checkpoint saved, resume me"};
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
    fin.add(dev.is_cuda() ? "peak_mem_mb" : "peak_rss_mb",
            dev.is_cuda() ? peak_device_mb() : peak_rss_mb());
    metrics_->write(fin);
    LOG_IF(INFO, ctx_.is_root()) << "done: " << cfg_.steps << " steps, " << tokens_done_
                                 << " tokens in " << format_duration(wall) << ", mean "
                                 << static_cast<int64_t>(tokens_done_ / std::max(wall, 1e-9))
                                 << " tokens/s";
    if (const auto a = caching_cpu_allocator_stats(); ctx_.is_root() && a.hits + a.misses > 0)
      LOG(INFO) << "CPU allocator: " << a.hits << " of " << a.hits + a.misses
                << " large allocations served from its cache, " << (a.cached_bytes >> 20)
                << " MB cached at the end";
    if (ctx_.is_root() && !cfg_.save_weights.empty()) {
      ckpt::write_weights(cfg_.save_weights, model_->named_parameters());
      LOG(INFO) << "weights written to " << cfg_.save_weights;
    }
  }

 private:
  // This rank's inputs and targets of windows x (rows of T + 1 tokens): all T positions, or with
  // context parallelism its slice [i T/N, (i+1) T/N) of them.
  std::pair<torch::Tensor, torch::Tensor> my_tokens(const torch::Tensor& x) const {
    const int64_t n = cfg_.context_parallel, len = cfg_.seq_len / n;
    const int64_t begin = (ctx_.rank % n) * len;
    return {x.slice(1, begin, begin + len), x.slice(1, begin + 1, begin + len + 1)};
  }

  // Sum of the next-token cross entropy over the targets that are not padding.
  torch::Tensor token_loss_sum(const torch::Tensor& logits, const torch::Tensor& targets) const {
    const int64_t V = logits.size(-1);
    return ops::cross_entropy_sum(logits.reshape({-1, V}), targets.reshape({-1}),
                                  cfg_.model.pad_id >= 0 ? cfg_.model.pad_id : -100);
  }

  torch::Tensor count_targets(const torch::Tensor& targets) const {
    if (cfg_.model.pad_id < 0) return torch::full({}, static_cast<double>(targets.numel()));
    return targets.ne(cfg_.model.pad_id).sum().to(torch::kDouble);
  }

  void evaluate(int64_t step) {
    torch::NoGradGuard no_grad;
    model_->eval();
    val_loader_->seek({0, 0});  // the same batches every time, so evaluations compare
    auto acc = torch::zeros({2}, torch::kDouble);
    for (int64_t i = 0; i < eval_batches_; ++i) {
      data::Batch b = val_loader_->next();
      auto tokens = torch::from_blob(b.tokens.data(), {b.rows, b.cols}, torch::kInt32)
                        .to(torch::kLong)
                        .to(ctx_.device);
      auto [inputs, targets] = my_tokens(tokens);
      AutocastScope autocast(cfg_.precision == "bf16");
      auto logits = model_->forward(inputs).to(torch::kFloat32);
      acc[0] += token_loss_sum(logits, targets).cpu().to(torch::kDouble);
      acc[1] += count_targets(targets).cpu();
    }
    model_->train();
    acc = sum_over_ranks(acc);
    const double val_loss = acc[0].item<double>() / std::max(1.0, acc[1].item<double>());
    JsonLine j;
    j.add("step", step).add("val_loss", val_loss).add("val_batches", eval_batches_);
    metrics_->write(j);
    LOG_IF(INFO, ctx_.is_root()) << "step " << step << " | val loss " << val_loss << " over "
                                 << eval_batches_ << " batches";
  }

  // A small tensor's sum over ranks, returned on the host (the collective runs on the device the
  // communicator serves). Works on a copy: the argument is left as it was.
  torch::Tensor sum_over_ranks(const torch::Tensor& t) {
    auto dev = t.to(ctx_.device, /*non_blocking=*/false, /*copy=*/true).contiguous();
    comm_->allreduce_sum(dev);
    return dev.cpu();
  }

  TrainConfig cfg_;
  const dist::DistContext& ctx_;
  int64_t local_rows_ = 0, micro_ = 0, accum_ = 1, eval_batches_ = 0, tokens_done_ = 0;
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
};

}  // namespace

int run_training(TrainConfig cfg, const dist::DistContext& ctx) {
  const std::string save_weights = ctx.is_root() ? cfg.save_weights : "";
  Trainer trainer(std::move(cfg), ctx);
  // Setup errors are the user's; agree across ranks before any collective so that a bad flag or
  // file makes every rank exit 2, instead of leaving the healthy ranks waiting for the failed one.
  // Rank 0 prints its error; another rank prints its own only when rank 0's setup went well (a
  // file missing on one node), so a bad flag gives exactly one line however many ranks there are.
  int status = kExitOk;
  std::string error;
  try {
    trainer.setup();
  } catch (const UsageError& e) {
    status = kExitUsage;
    error = e.what();
  }
  int worst = status, root_status = status;
  SAMOUT_MPI_CHECK(MPI_Allreduce(&status, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
  SAMOUT_MPI_CHECK(MPI_Bcast(&root_status, 1, MPI_INT, 0, MPI_COMM_WORLD));
  if (worst != kExitOk) {
    if (ctx.is_root() && status != kExitOk) {
      std::fprintf(stderr, "samout_ddp: error: %s\n", error.c_str());
    } else if (!ctx.is_root() && status != kExitOk && root_status == kExitOk) {
      std::fprintf(stderr, "samout_ddp: error: rank %d: %s\n", ctx.rank, error.c_str());
    }
    return worst;
  }
  install_preemption_handlers();
  try {
    trainer.connect();
    trainer.train();
  } catch (const RunStopped& stop) {
    if (ctx.is_root()) LOG(WARNING) << stop.message;
    return stop.exit_code;
  } catch (const std::exception& e) {
    if (!save_weights.empty()) remove_partial_output(save_weights);  // e.g. a disk that filled up
    std::string what = e.what();
    dist::abort_job("training failed: " + what.substr(0, what.find('\n')));
  }
  return kExitOk;
}

}  // namespace samout::train
