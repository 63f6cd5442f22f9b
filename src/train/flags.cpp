// samout_ddp's flags. Names are a contract with scripts and users (see the trainer issue).
#include "samout/train/flags.h"

#include <gflags/gflags.h>

#include <cmath>
#include <cstdio>
#include <set>
#include <vector>

#include "samout/common/error.h"
#include "samout/common/strings.h"
#include "samout/dist/agree.h"

// ---- model
DEFINE_int64(vocab_size, 0, "vocabulary size; 0 = the corpus's (required for random: data)");
DEFINE_int64(hidden, 512, "hidden size d");
DEFINE_int64(layers, 8, "decoder layers L");
DEFINE_int64(heads, 8, "heads h (must divide hidden)");
DEFINE_int64(seq_len, 50, "tokens predicted per sequence (windows hold seq_len+1 tokens)");
DEFINE_string(gate, "auto", "cummax_gate implementation: auto | fused | composite");
// ---- data
DEFINE_string(data, "random:0", "training data: a glob of HDF5 shards, or random:SEED");
DEFINE_string(val_data, "", "validation data (glob); empty = no evaluation");
DEFINE_int32(prefetch, 4, "batches the loader reads ahead in a background thread");
// ---- run
DEFINE_int64(batch_size, 32, "global batch in sequences (the same at every world size)");
DEFINE_int64(micro_batch, 0, "sequences per rank per micro-step; 0 = batch_size/world");
DEFINE_int64(steps, 100, "optimizer steps to run");
DEFINE_int64(tokens, 0, "token budget; when set, steps = ceil(tokens / (batch_size*seq_len))");
DEFINE_double(lr, 1e-3, "peak learning rate");
DEFINE_double(min_lr, 0.0, "final learning rate of the cosine schedule");
DEFINE_string(lr_schedule, "constant", "constant | cosine (both after --warmup_steps)");
DEFINE_int64(warmup_steps, 0, "linear warmup steps");
DEFINE_string(optimizer, "adam", "adam (the seed's) | adamw");
DEFINE_double(beta1, 0.9, "Adam beta1");
DEFINE_double(beta2, 0.999, "Adam beta2");
DEFINE_double(eps, 1e-8, "Adam epsilon");
DEFINE_double(weight_decay, 0.0, "L2 penalty (adam) or decoupled decay (adamw)");
DEFINE_double(grad_clip, 0.0, "clip gradients to this global norm; 0 = off");
DEFINE_uint64(seed, 0, "seed of the initial weights and of the data shuffle");
DEFINE_string(device, "auto", "auto | cpu | cuda");
DEFINE_string(precision, "fp32", "fp32 | bf16 (autocast; GPU only)");
DEFINE_bool(tf32, false, "GPU fp32 products on TF32 tensor cores (MFU then uses the TF32 peak)");
DEFINE_int32(threads, 0, "intra-op threads per rank; 0 = cores / ranks on the node");
DEFINE_int64(log_every, 10, "log a line every N steps");
DEFINE_string(metrics_file, "", "JSONL file of per-step metrics (rank 0 writes it)");
DEFINE_int64(eval_every, 0, "evaluate every N steps (0 = at the end only)");
DEFINE_int64(eval_batches, 8, "global batches per evaluation");
DEFINE_double(peak_tflops, 0,
              "peak TFLOP/s per device for MFU; 0 = the card's dense peak for the precision (A100, "
              "H100 SXM/PCIe/NVL, H200), or no MFU on other devices");
DEFINE_string(init_from, "", "HDF5 weights file (docs/model.md names) to start from");
DEFINE_string(save_weights, "", "write the final weights here (HDF5, docs/model.md names; rank 0)");
// ---- checkpoints
DEFINE_string(ckpt_dir, "", "checkpoint folder (step_NNNNNNNN/ inside); empty = no checkpoints");
DEFINE_int64(ckpt_every, 0, "steps between checkpoints; 0 = only at the end and on preemption");
DEFINE_int32(keep_ckpts, 3, "how many of the newest complete checkpoints to keep");
DEFINE_string(resume, "auto", "auto (newest valid checkpoint in --ckpt_dir) | never | PATH");
DEFINE_bool(ckpt_async, true, "write checkpoints in a background thread");
DEFINE_int32(zero, 0, "1 = ZeRO-1: shard the optimizer state over ranks");
DEFINE_int64(max_bad_steps, 10, "consecutive non-finite steps (skipped) before the run stops");
DEFINE_string(debug_nan_steps, "", "TEST ONLY: comma-separated steps whose loss is set to NaN");
DEFINE_int64(debug_kill_in_save, -1, "TEST ONLY: the last rank kills itself mid-save of this step");
DEFINE_bool(
    debug_sync_check, false,
    "TEST ONLY: on a GPU, any host sync inside a training step (after the first) is an error");
// ---- communication
DEFINE_int64(bucket_mb, 25, "gradient bucket size in MB");
DEFINE_double(comm_timeout_s, 300, "seconds a collective may take before the job is aborted");
DEFINE_int32(context_parallel, 1,
             "ranks that share each sequence, each holding 1/N of its tokens (context "
             "parallelism); must divide the world size and --seq_len");
DEFINE_string(comm, "auto",
              "auto (NCCL on GPUs, MPI on CPUs) | nccl | mpi (CUDA tensors staged through host "
              "memory; lets several ranks share one GPU, for testing)");

namespace samout::train {

namespace {

// A double as a user would write it: 0.001, 2, nan, inf.
std::string format_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

constexpr double kMaxCommTimeoutS = 86400;  // a day

// Flags that may differ between ranks: they do not change what any rank computes or when it
// communicates (rank 0 alone writes the metrics and the final weights).
const std::set<std::string> kRankLocalFlags = {"threads", "prefetch", "metrics_file",
                                               "save_weights", "peak_tflops"};

// One of a flag's named values, as an enum: "--optimizer must be adam or adamw, got 'sgd'".
template <typename E>
E choice(const char* flag, const std::string& value,
         std::initializer_list<std::pair<const char*, E>> choices) {
  std::string names;
  size_t i = 0;
  for (const auto& [name, e] : choices) {
    if (value == name) return e;
    if (i > 0) names += i + 1 == choices.size() ? " or " : ", ";
    names += name;
    ++i;
  }
  throw UsageError(std::string("--") + flag + " must be " + names + ", got '" + value + "'");
}

}  // namespace

const char* to_string(Optimizer o) { return o == Optimizer::kAdamW ? "adamw" : "adam"; }

TrainConfig config_from_flags() {
  TrainConfig c;
  c.model.vocab_size = FLAGS_vocab_size;
  c.model.hidden = FLAGS_hidden;
  c.model.layers = FLAGS_layers;
  c.model.heads = FLAGS_heads;
  c.model.gate = ops::parse_gate_impl(FLAGS_gate);
  c.seq_len = FLAGS_seq_len;
  c.data = FLAGS_data;
  c.val_data = FLAGS_val_data;
  c.prefetch = FLAGS_prefetch;
  c.batch_size = FLAGS_batch_size;
  c.micro_batch = FLAGS_micro_batch;
  c.steps = FLAGS_steps;
  c.tokens = FLAGS_tokens;
  c.lr = FLAGS_lr;
  c.min_lr = FLAGS_min_lr;
  c.lr_schedule =
      choice<LrSchedule>("lr_schedule", FLAGS_lr_schedule,
                         {{"constant", LrSchedule::kConstant}, {"cosine", LrSchedule::kCosine}});
  c.warmup_steps = FLAGS_warmup_steps;
  c.optimizer = choice<Optimizer>("optimizer", FLAGS_optimizer,
                                  {{"adam", Optimizer::kAdam}, {"adamw", Optimizer::kAdamW}});
  c.beta1 = FLAGS_beta1;
  c.beta2 = FLAGS_beta2;
  c.eps = FLAGS_eps;
  c.weight_decay = FLAGS_weight_decay;
  c.grad_clip = FLAGS_grad_clip;
  c.seed = FLAGS_seed;
  c.device = choice<dist::DeviceRequest>("device", FLAGS_device,
                                         {{"auto", dist::DeviceRequest::kAuto},
                                          {"cpu", dist::DeviceRequest::kCpu},
                                          {"cuda", dist::DeviceRequest::kCuda}});
  c.precision = choice<Precision>("precision", FLAGS_precision,
                                  {{"fp32", Precision::kFp32}, {"bf16", Precision::kBf16}});
  c.tf32 = FLAGS_tf32;
  c.threads = FLAGS_threads;
  c.log_every = FLAGS_log_every;
  c.metrics_file = FLAGS_metrics_file;
  c.eval_every = FLAGS_eval_every;
  c.eval_batches = FLAGS_eval_batches;
  c.peak_tflops = FLAGS_peak_tflops;
  c.init_from = FLAGS_init_from;
  c.save_weights = FLAGS_save_weights;
  c.ckpt_dir = FLAGS_ckpt_dir;
  c.ckpt_every = FLAGS_ckpt_every;
  c.keep_ckpts = FLAGS_keep_ckpts;
  c.resume = FLAGS_resume;
  c.ckpt_async = FLAGS_ckpt_async;
  c.zero = FLAGS_zero;
  c.max_bad_steps = FLAGS_max_bad_steps;
  c.debug_kill_in_save = FLAGS_debug_kill_in_save;
  c.debug_sync_check = FLAGS_debug_sync_check;
  for (const auto& item : split_list(FLAGS_debug_nan_steps)) {
    try {
      c.debug_nan_steps.push_back(std::stoll(item));
    } catch (const std::exception&) {
      throw UsageError("--debug_nan_steps: '" + item + "' is not a step number");
    }
  }
  c.bucket_mb = FLAGS_bucket_mb;
  c.comm_timeout_s = FLAGS_comm_timeout_s;
  c.comm = choice<dist::CommRequest>("comm", FLAGS_comm,
                                     {{"auto", dist::CommRequest::kAuto},
                                      {"nccl", dist::CommRequest::kNccl},
                                      {"mpi", dist::CommRequest::kMpi}});
  c.context_parallel = FLAGS_context_parallel;

  auto positive = [](int64_t v, const char* name) {
    require(v > 0, std::string("--") + name + " must be positive, got " + std::to_string(v));
  };
  // An integer flag within [lo, hi]; named with its range.
  auto within = [](int64_t v, const char* name, int64_t lo, int64_t hi) {
    const std::string range = hi == INT64_MAX
                                  ? ">= " + std::to_string(lo)
                                  : "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
    require(v >= lo && v <= hi,
            std::string("--") + name + " must be " + range + ", got " + std::to_string(v));
  };
  // A real flag: finite (no nan or inf) and within the range `ok` describes as `range`.
  auto real = [](double v, const char* name, bool ok, const std::string& range) {
    require(std::isfinite(v) && ok,
            std::string("--") + name + " must be " + range + ", got " + format_number(v));
  };
  within(c.model.vocab_size, "vocab_size", 0, INT64_MAX);
  positive(c.model.hidden, "hidden");
  positive(c.model.layers, "layers");
  positive(c.model.heads, "heads");
  require(c.model.hidden % c.model.heads == 0,
          "--hidden=" + std::to_string(c.model.hidden) +
              " is not divisible by --heads=" + std::to_string(c.model.heads));
  positive(c.seq_len, "seq_len");
  positive(c.batch_size, "batch_size");
  within(c.micro_batch, "micro_batch", 0, INT64_MAX);
  require(c.steps >= 0 && c.tokens >= 0, "--steps and --tokens must be >= 0");
  real(c.lr, "lr", c.lr > 0, "a finite number > 0");
  real(c.min_lr, "min_lr", c.min_lr >= 0 && c.min_lr <= c.lr,
       "in [0, --lr=" + format_number(c.lr) + "]");
  real(c.beta1, "beta1", c.beta1 >= 0 && c.beta1 < 1, "in [0, 1)");
  real(c.beta2, "beta2", c.beta2 >= 0 && c.beta2 < 1, "in [0, 1)");
  real(c.eps, "eps", c.eps >= 0, "a finite number >= 0");
  real(c.weight_decay, "weight_decay", c.weight_decay >= 0, "a finite number >= 0");
  real(c.grad_clip, "grad_clip", c.grad_clip >= 0, "a finite number >= 0 (0 = off)");
  within(c.warmup_steps, "warmup_steps", 0, INT64_MAX);
  within(c.eval_every, "eval_every", 0, INT64_MAX);
  if (c.val_data.empty()) {
    within(c.eval_batches, "eval_batches", 0, INT64_MAX);
  } else {
    require(c.eval_batches >= 1,
            "--eval_batches must be >= 1 with --val_data, got " + std::to_string(c.eval_batches));
  }
  // Far more threads than any node has cores only oversubscribes it (100000 hangs creating them).
  within(c.threads, "threads", 0, 1024);
  within(c.prefetch, "prefetch", 0, 1024);
  within(c.debug_kill_in_save, "debug_kill_in_save", -1, INT64_MAX);
  positive(c.log_every, "log_every");
  require(c.zero == 0 || c.zero == 1, "--zero must be 0 or 1, got " + std::to_string(c.zero));
  within(c.ckpt_every, "ckpt_every", 0, INT64_MAX);
  within(c.keep_ckpts, "keep_ckpts", 1, INT64_MAX);
  positive(c.max_bad_steps, "max_bad_steps");
  require(!c.resume.empty(), "--resume must be auto, never or the path of a checkpoint");
  positive(c.bucket_mb, "bucket_mb");
  within(c.bucket_mb, "bucket_mb", 1, int64_t{1} << 30);
  positive(c.context_parallel, "context_parallel");
  // The deadline is what keeps a job with a dead peer from hanging: it cannot be switched off, by
  // nan, 0, a negative value or one so large that it overflows the watchdog's clock.
  require(std::isfinite(c.comm_timeout_s) && c.comm_timeout_s > 0 &&
              c.comm_timeout_s <= kMaxCommTimeoutS,
          "--comm_timeout_s must be a positive number of seconds, at most " +
              format_number(kMaxCommTimeoutS) + ", got " + format_number(c.comm_timeout_s));
  require(c.peak_tflops >= 0 && std::isfinite(c.peak_tflops),
          "--peak_tflops must be >= 0, got " + std::to_string(c.peak_tflops));
  if (c.tokens > 0) {
    const int64_t per_step = c.batch_size * c.seq_len;
    c.steps = (c.tokens + per_step - 1) / per_step;
  }
  return c;
}

// ---- ranks that must agree

std::string run_flags() {
  std::vector<gflags::CommandLineFlagInfo> all;
  gflags::GetAllFlags(&all);  // sorted by file, then name: the same order on every rank
  std::string out;
  for (const auto& f : all)
    if (f.filename == __FILE__ && !kRankLocalFlags.count(f.name))
      out += "--" + f.name + "=" + f.current_value + "\n";
  return out;
}

std::string compare_with_root() {
  const std::string mine = run_flags(), root = dist::broadcast_from_root(mine);
  if (root == mine) return "";
  const auto a = split_list(mine, '\n'), b = split_list(root, '\n');
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
    const std::string x = i < a.size() ? a[i] : "(none)", y = i < b.size() ? b[i] : "(none)";
    if (x != y)
      return x + " differs from rank 0's " + y + "; every rank must be given the same flags";
  }
  return "";
}

bool agree_no_error(const dist::DistContext& ctx, const std::string& error, const char* program) {
  const int mine = error.empty() ? ctx.world : ctx.rank;
  const int first = dist::min_over_ranks(mine);
  if (first == ctx.world) return true;
  if (first == ctx.rank) {
    const std::string who = ctx.is_root() ? "" : "rank " + std::to_string(ctx.rank) + ": ";
    std::fprintf(stderr, "%s: error: %s%s\n", program, who.c_str(), error.c_str());
  }
  return false;
}

}  // namespace samout::train
