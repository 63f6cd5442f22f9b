// bench_allreduce: the all-reduce of our Communicator, in the manner of nccl-tests' all_reduce_perf:
// for each message size, a correctness check and the time, algorithm bandwidth and bus bandwidth,
// against a baseline in the same run on the same buffer.
//
//   mpirun --oversubscribe -np 2 build/bin/bench_allreduce                  (MPI, CPU tensors)
//   mpirun -np 2 build/bin/bench_allreduce --comm=nccl --max_bytes=1G      (NCCL, a GPU per rank)
//
// Flags: --min_bytes, --max_bytes (with K, M or G: powers of 1024), --factor (each size is the last
// times this), --iters (timed calls per round), --warmup (untimed calls per size), --rounds (the
// median round is reported), --dtype=fp32|fp64|int32|int64|bf16 (bf16: NCCL only; MPI has no bf16
// sum), --comm=mpi|nccl, --device=auto|cpu|cuda (auto: cuda for NCCL, the CPU for MPI; MPI on CUDA
// stages through pinned host memory, as --comm=mpi does in training).
//
// Columns per size, each measured on the same buffer:
//   [1] Communicator::allreduce_sum (complete on return)
//   [2] Communicator::allreduce_sum_async + wait_all (GradReducer's path)
//   [3] the baseline, the library called directly, in place: MPI_Allreduce(MPI_IN_PLACE) on the
//       host buffer (for MPI on CUDA: on a pinned host buffer of the same size, so the ratio
//       includes the staging copies), or ncclAllReduce on a raw communicator and the current stream
//   [4] MPI only: MPI_Iallreduce + MPI_Wait, the nonblocking algorithm our MPI communicator uses,
//       without its polling loop: tells the cost of the nonblocking collective from that of our
//       waiting
// and the ratios [1]/[3] and [2]/[3] of the times (our wrapper's overhead).
//
// Time: each round, after a barrier (and a device synchronisation), --iters calls back to back and
// one synchronisation, divided by --iters; the slowest rank's time counts, and the median of
// --rounds rounds is printed. Rounds interleave the columns so that a change in machine load
// hits all of them. algbw = bytes / time; busbw = algbw * 2 (n - 1) / n for n ranks, the bytes each
// link carries in a ring all-reduce (nccl-tests' convention), in GB/s (10^9 B/s).
//
// Check: before timing, each column sums a pattern of small integers (rank- and index-dependent,
// |x| <= 14, exact in every dtype for up to 18 ranks) once and every element is compared with the
// sum computed locally; #wrong counts mismatches over all ranks. Any mismatch exits 1. Timed calls
// run on zeros: in-place sums of zeros stay zeros however many calls there are (no overflow), and
// the values do not change the work of a sum.
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <mpi.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "samout/common/error.h"
#include "samout/dist/checks.h"
#include "samout/dist/communicator.h"
#include "samout/dist/context.h"

#ifdef SAMOUT_HAVE_NCCL
#include <ATen/cuda/CUDAContext.h>
#include <nccl.h>
#endif

DEFINE_string(min_bytes, "8", "smallest message (bytes; K, M, G suffixes are powers of 1024)");
DEFINE_string(max_bytes, "64M", "largest message");
DEFINE_double(factor, 2.0, "each message size is the previous one times this (> 1)");
DEFINE_int32(iters, 20, "timed calls per round and size");
DEFINE_int32(warmup, 5, "untimed calls per size and column before the rounds");
DEFINE_int32(rounds, 3, "rounds per size (the median is printed)");
DEFINE_string(dtype, "fp32", "fp32 | fp64 | int32 | int64 | bf16 (NCCL only)");
DEFINE_string(comm, "mpi", "mpi | nccl");
DEFINE_string(device, "auto", "auto | cpu | cuda (auto: cuda for NCCL, cpu for MPI)");
DEFINE_double(comm_timeout_s, 300, "deadline of each collective of the Communicator");

namespace {

using samout::require;
using Clock = std::chrono::steady_clock;

int64_t parse_bytes(const std::string& flag, const std::string& s) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  require(used > 0, "--" + flag + "=" + s + " is not a size");
  std::string suffix = s.substr(used);
  double scale = 1;
  if (suffix == "K" || suffix == "k") {
    scale = 1024.0;
  } else if (suffix == "M" || suffix == "m") {
    scale = 1024.0 * 1024;
  } else if (suffix == "G" || suffix == "g") {
    scale = 1024.0 * 1024 * 1024;
  } else {
    require(suffix.empty(), "--" + flag + "=" + s + ": unknown suffix (K, M or G)");
  }
  const double bytes = v * scale;
  require(std::isfinite(bytes) && bytes >= 1 && bytes <= 64.0 * (1LL << 30),
          "--" + flag + "=" + s + " is outside [1, 64G]");
  return static_cast<int64_t>(bytes);
}

torch::ScalarType parse_dtype(const std::string& s) {
  if (s == "fp32") return torch::kFloat;
  if (s == "fp64") return torch::kDouble;
  if (s == "int32") return torch::kInt;
  if (s == "int64") return torch::kLong;
  if (s == "bf16") return torch::kBFloat16;
  throw samout::UsageError("--dtype must be fp32, fp64, int32, int64 or bf16, got '" + s + "'");
}

// Rank q's contribution to the check: small integers, exact in every dtype.
torch::Tensor pattern(int64_t count, int q) {
  auto i = torch::arange(count, torch::kLong);
  return (i * 7919 + q * 104729) % 29 - 14;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double max_over_ranks(double x) {
  double m = x;
  SAMOUT_MPI_CHECK(MPI_Allreduce(&x, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
  return m;
}

int64_t sum_over_ranks(int64_t x) {
  int64_t s = x;
  SAMOUT_MPI_CHECK(MPI_Allreduce(&x, &s, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD));
  return s;
}

// One column of the table: an in-place sum of `buf` over the ranks, complete on the host's side
// once sync_device() has returned.
struct Column {
  std::string name;
  std::function<void(torch::Tensor&)> run;
  bool on_host_buffer = false;  // runs on the pinned host copy (the MPI baseline on CUDA)
};

struct Figures {
  double time_s = 0;
  int64_t wrong = 0;
};

class Bench {
 public:
  Bench(const samout::dist::DistContext& ctx, torch::ScalarType dtype)
      : ctx_(ctx), dtype_(dtype), cuda_(ctx.device.is_cuda()) {}

  void sync_device() const {
    if (cuda_) torch::cuda::synchronize();
  }

  // Sums the pattern once and counts wrong elements over all ranks.
  int64_t check(const Column& c, torch::Tensor& buf, const torch::Tensor& expected) {
    buf.copy_(pattern(buf.numel(), ctx_.rank));
    c.run(buf);
    sync_device();
    const int64_t wrong = buf.cpu().ne(expected).sum().item<int64_t>();
    return sum_over_ranks(wrong);
  }

  // Seconds per call: --iters calls after a barrier, the slowest rank's.
  double time(const Column& c, torch::Tensor& buf) {
    sync_device();
    SAMOUT_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    const auto t0 = Clock::now();
    for (int i = 0; i < FLAGS_iters; ++i) c.run(buf);
    sync_device();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count() / FLAGS_iters;
    return max_over_ranks(s);
  }

  std::vector<Figures> measure(const std::vector<Column>& cols, int64_t count) {
    const auto opts = torch::TensorOptions().dtype(dtype_);
    torch::Tensor dev = torch::empty({count}, opts.device(ctx_.device));
    torch::Tensor host = cuda_ ? torch::empty({count}, opts.pinned_memory(true)) : dev;
    auto expected = pattern(count, 0);
    for (int q = 1; q < ctx_.world; ++q) expected += pattern(count, q);
    expected = expected.to(dtype_);

    std::vector<Figures> f(cols.size());
    std::vector<std::vector<double>> times(cols.size());
    for (size_t k = 0; k < cols.size(); ++k) {
      auto& buf = cols[k].on_host_buffer ? host : dev;
      f[k].wrong = check(cols[k], buf, expected);
      buf.zero_();
      for (int i = 0; i < FLAGS_warmup; ++i) cols[k].run(buf);
    }
    for (int r = 0; r < FLAGS_rounds; ++r)
      for (size_t k = 0; k < cols.size(); ++k)
        times[k].push_back(time(cols[k], cols[k].on_host_buffer ? host : dev));
    for (size_t k = 0; k < cols.size(); ++k) f[k].time_s = median(times[k]);
    return f;
  }

 private:
  const samout::dist::DistContext& ctx_;
  torch::ScalarType dtype_;
  bool cuda_;
};

#ifdef SAMOUT_HAVE_NCCL
// The baseline's own NCCL communicator, apart from the Communicator's.
struct RawNccl {
  ncclComm_t comm = nullptr;
  RawNccl(int rank, int world) {
    ncclUniqueId id;
    if (rank == 0) SAMOUT_NCCL_CHECK(ncclGetUniqueId(&id));
    SAMOUT_MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD));
    SAMOUT_NCCL_CHECK(ncclCommInitRank(&comm, world, id, rank));
  }
  ~RawNccl() {
    if (comm) ncclCommDestroy(comm);
  }
  RawNccl(const RawNccl&) = delete;
  RawNccl& operator=(const RawNccl&) = delete;
};
#endif

int run(samout::dist::DistContext& ctx) {
  // Every check on the flags comes before the first collective, so that all ranks stop alike.
  require(FLAGS_comm == "mpi" || FLAGS_comm == "nccl",
          "--comm must be mpi or nccl, got '" + FLAGS_comm + "'");
  require(FLAGS_device == "auto" || FLAGS_device == "cpu" || FLAGS_device == "cuda",
          "--device must be auto, cpu or cuda, got '" + FLAGS_device + "'");
  const auto dtype = parse_dtype(FLAGS_dtype);
  require(dtype != torch::kBFloat16 || FLAGS_comm == "nccl",
          "--dtype=bf16 needs --comm=nccl (MPI has no bf16 sum)");
  const int64_t min_bytes = parse_bytes("min_bytes", FLAGS_min_bytes);
  const int64_t max_bytes = parse_bytes("max_bytes", FLAGS_max_bytes);
  require(min_bytes <= max_bytes, "--min_bytes is larger than --max_bytes");
  require(FLAGS_factor > 1.0 && FLAGS_factor <= 1024, "--factor must be in (1, 1024]");
  require(FLAGS_iters >= 1 && FLAGS_iters <= 1000000, "--iters must be in [1, 1e6]");
  require(FLAGS_warmup >= 0 && FLAGS_warmup <= 1000000, "--warmup must be in [0, 1e6]");
  require(FLAGS_rounds >= 1 && FLAGS_rounds <= 1000, "--rounds must be in [1, 1000]");
  require(FLAGS_comm_timeout_s > 0 && FLAGS_comm_timeout_s <= 86400,
          "--comm_timeout_s must be in (0, 86400]");
  require(ctx.world >= 2, "a world of one has nothing to reduce: run under mpirun -np 2 or more");
  require(FLAGS_comm == "mpi" || samout::dist::nccl_compiled(), "this build has no NCCL");
  const std::string device =
      FLAGS_device != "auto" ? FLAGS_device : (FLAGS_comm == "nccl" ? "cuda" : "cpu");
  samout::dist::select_device(
      ctx,
      device == "cuda" ? samout::dist::DeviceRequest::kCuda : samout::dist::DeviceRequest::kCpu,
      FLAGS_comm == "nccl" ? samout::dist::CommRequest::kNccl : samout::dist::CommRequest::kMpi);
  torch::set_num_threads(1);  // fills and checks only; the ranks share the cores

  auto comm = samout::dist::make_communicator(ctx, FLAGS_comm_timeout_s);
  std::vector<Column> cols;
  cols.push_back(
      {"Communicator::allreduce_sum", [&](torch::Tensor& t) { comm->allreduce_sum(t); }});
  cols.push_back({"allreduce_sum_async+wait_all", [&](torch::Tensor& t) {
                    comm->allreduce_sum_async(t, "bench all-reduce");
                    comm->wait_all();
                  }});
#ifdef SAMOUT_HAVE_NCCL
  std::unique_ptr<RawNccl> raw;
  if (ctx.comm == samout::dist::CommKind::kNccl) {
    raw = std::make_unique<RawNccl>(ctx.rank, ctx.world);
    cols.push_back({"ncclAllReduce (baseline)", [&](torch::Tensor& t) {
                      SAMOUT_NCCL_CHECK(ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(),
                                                      samout::dist::nccl_datatype(t.scalar_type()),
                                                      ncclSum, raw->comm,
                                                      at::cuda::getCurrentCUDAStream().stream()));
                    }});
  }
#endif
  if (ctx.comm == samout::dist::CommKind::kMpi) {
    cols.push_back({"MPI_Allreduce (baseline)",
                    [&](torch::Tensor& t) {
                      SAMOUT_MPI_CHECK(MPI_Allreduce(
                          MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()),
                          samout::dist::mpi_datatype(t.scalar_type()), MPI_SUM, MPI_COMM_WORLD));
                    },
                    /*on_host_buffer=*/true});
    cols.push_back({"MPI_Iallreduce+MPI_Wait",
                    [&](torch::Tensor& t) {
                      MPI_Request req;
                      SAMOUT_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, t.data_ptr(),
                                                      static_cast<int>(t.numel()),
                                                      samout::dist::mpi_datatype(t.scalar_type()),
                                                      MPI_SUM, MPI_COMM_WORLD, &req));
                      SAMOUT_MPI_CHECK(MPI_Wait(&req, MPI_STATUS_IGNORE));
                    },
                    /*on_host_buffer=*/true});
  }
  CHECK_GE(cols.size(), 3u);  // the baseline is [3]

  // Message sizes: whole elements, each size once.
  const int64_t elem = c10::elementSize(dtype);
  std::vector<int64_t> counts;
  for (int64_t b = min_bytes; b <= max_bytes;) {
    const int64_t c = std::max<int64_t>(1, b / elem);
    if (counts.empty() || counts.back() != c) counts.push_back(c);
    b = std::max<int64_t>(b + 1, std::llround(static_cast<double>(b) * FLAGS_factor));
  }
  require(counts.back() <= INT32_MAX, "--max_bytes is more elements than MPI's int count");

  const bool root = ctx.is_root();
  const double bus = 2.0 * (ctx.world - 1) / ctx.world;
  if (root) {
    char lib[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(lib, &len);
    std::string first_line(lib, len);
    first_line = first_line.substr(0, first_line.find('\n'));
    std::printf("# bench_allreduce: %d ranks (%d on this node), comm %s, device %s, dtype %s\n",
                ctx.world, ctx.local_world, FLAGS_comm.c_str(), ctx.device.str().c_str(),
                FLAGS_dtype.c_str());
    std::printf("# iters %d, warmup %d, rounds %d (median round; time = slowest rank's)\n",
                FLAGS_iters, FLAGS_warmup, FLAGS_rounds);
    std::printf("# %s\n", first_line.c_str());
    std::printf("# columns:");
    for (size_t k = 0; k < cols.size(); ++k) std::printf(" [%zu] %s", k + 1, cols[k].name.c_str());
    std::printf("\n");
    std::printf("# time in us, algbw and busbw in GB/s; ratio = time / time of [3]\n#\n");
    std::printf("# %10s %10s %5s |", "size(B)", "count", "type");
    for (size_t k = 1; k <= cols.size(); ++k)
      std::printf(" %9s%zu %7s %7s %6s |", "time", k, "algbw", "busbw", "#wrong");
    std::printf(" %7s %7s\n", "[1]/[3]", "[2]/[3]");
    std::fflush(stdout);
  }

  int64_t wrong = 0;
  std::vector<double> busbw_sum(cols.size(), 0.0);
  for (int64_t count : counts) {
    Bench bench(ctx, dtype);
    const auto f = bench.measure(cols, count);
    const int64_t bytes = count * elem;
    for (size_t k = 0; k < f.size(); ++k) {
      wrong += f[k].wrong;
      busbw_sum[k] += bytes / f[k].time_s / 1e9 * bus;
    }
    if (!root) continue;
    std::printf("  %10ld %10ld %5s |", static_cast<long>(bytes), static_cast<long>(count),
                FLAGS_dtype.c_str());
    for (const auto& x : f) {
      const double algbw = bytes / x.time_s / 1e9;
      std::printf(" %10.1f %7.3f %7.3f %6ld |", x.time_s * 1e6, algbw, algbw * bus,
                  static_cast<long>(x.wrong));
    }
    std::printf(" %7.2f %7.2f\n", f[0].time_s / f[2].time_s, f[1].time_s / f[2].time_s);
    std::fflush(stdout);
  }
  if (root) {
    std::printf("# #wrong in all: %ld\n", static_cast<long>(wrong));
    std::printf("# avg busbw (GB/s):");
    for (size_t k = 0; k < cols.size(); ++k)
      std::printf(" [%zu] %.3f", k + 1, busbw_sum[k] / counts.size());
    std::printf("\n");
  }
  return wrong == 0 ? samout::kExitOk : samout::kExitFailure;
}

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage(
      "all-reduce correctness and bandwidth of the Communicator vs its library");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  auto ctx = samout::dist::init_distributed(&argc, &argv);
  const int rc = samout::run_program(
      "bench_allreduce", [&] { return run(ctx); }, /*report_usage=*/ctx.is_root());
  samout::dist::finalize_distributed();
  return rc;
}
