#include "samout/dist/context.h"

#include <glog/logging.h>
#include <unistd.h>

#include <cstdlib>

#include "samout/common/error.h"
#include "samout/dist/checks.h"

#ifdef SAMOUT_HAVE_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace samout::dist {

namespace {
int g_rank = -1;
std::string g_host = "?";
}  // namespace

[[noreturn]] void abort_job(const std::string& what, int code) {
  LOG(ERROR) << "rank " << g_rank << " on " << g_host << ": " << what << " -- aborting the job";
  google::FlushLogFiles(google::GLOG_INFO);
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

[[noreturn]] void fail_call(const char* call, const char* file, int line,
                            const std::string& error) {
  abort_job(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " + error);
}

DistContext init_distributed(int* argc, char*** argv) {
  DistContext ctx;
  int provided = 0;
  SAMOUT_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  if (provided < MPI_THREAD_MULTIPLE)
    LOG(WARNING) << "MPI provides thread level " << provided << " < MPI_THREAD_MULTIPLE";
  SAMOUT_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &ctx.rank));
  SAMOUT_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &ctx.world));
  MPI_Comm local;
  SAMOUT_MPI_CHECK(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, ctx.rank, MPI_INFO_NULL, &local));
  SAMOUT_MPI_CHECK(MPI_Comm_rank(local, &ctx.local_rank));
  SAMOUT_MPI_CHECK(MPI_Comm_size(local, &ctx.local_world));
  SAMOUT_MPI_CHECK(MPI_Comm_free(&local));
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  ctx.host = host;
  g_rank = ctx.rank;
  g_host = ctx.host;
  return ctx;
}

void select_device(DistContext& ctx, DeviceRequest device, CommRequest comm) {
  const int64_t gpus = torch::cuda::is_available() ? torch::cuda::device_count() : 0;
  require(device != DeviceRequest::kCuda || gpus > 0,
          "--device=cuda but no CUDA device is visible");
  const bool cuda = device != DeviceRequest::kCpu && gpus > 0;
  require(cuda || comm != CommRequest::kNccl,
          "--comm=nccl needs CUDA devices; this run is on the CPU");
  ctx.comm = cuda && comm != CommRequest::kMpi ? CommKind::kNccl : CommKind::kMpi;
  if (!cuda) return;
  if (ctx.comm == CommKind::kNccl) {
    require(
        ctx.local_world <= gpus,
        std::to_string(ctx.local_world) + " ranks on host " + ctx.host + " but only " +
            std::to_string(gpus) +
            " GPUs (NCCL needs one GPU per rank; --comm=mpi lets ranks share one, for testing)");
  } else if (ctx.local_world > gpus && ctx.local_rank == 0) {
    LOG(WARNING) << ctx.local_world << " ranks share " << gpus << " GPU(s) on host " << ctx.host
                 << " (--comm=mpi, gradients staged through host memory): for testing multi-rank "
                    "logic, not for speed";
  }
  const int index = static_cast<int>(ctx.local_rank % gpus);
  ctx.device = torch::Device(torch::kCUDA, index);
#ifdef SAMOUT_HAVE_CUDA
  c10::cuda::set_device(index);  // cudaSetDevice: every later CUDA call lands here
#endif
}

void barrier() { SAMOUT_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); }

void finalize_distributed() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Finalize();
}

}  // namespace samout::dist
