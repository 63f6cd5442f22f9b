#include "samout/dist/context.h"

#include <glog/logging.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <vector>

#include "samout/common/error.h"
#include "samout/dist/checks.h"

#ifdef SAMOUT_HAVE_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#endif

namespace samout::dist {

namespace {
int g_rank = -1;
std::string g_host = "?";
MPI_Comm g_node = MPI_COMM_NULL;  // this node's ranks, ordered by local rank (select_device)

// Every local rank's string, in local-rank order; just `mine` outside init_distributed's world.
std::vector<std::string> gather_on_node(const std::string& mine) {
  if (g_node == MPI_COMM_NULL) return {mine};
  constexpr int kLen = 64;  // a PCI bus id is "0000:3b:00.0"
  std::array<char, kLen> buf{};
  mine.copy(buf.data(), kLen - 1);
  int n = 1;
  SAMOUT_MPI_CHECK(MPI_Comm_size(g_node, &n));
  std::vector<char> all(static_cast<size_t>(n) * kLen);
  SAMOUT_MPI_CHECK(MPI_Allgather(buf.data(), kLen, MPI_CHAR, all.data(), kLen, MPI_CHAR, g_node));
  std::vector<std::string> out;
  for (int r = 0; r < n; ++r) out.emplace_back(all.data() + static_cast<size_t>(r) * kLen);
  return out;
}

// The GPU's PCI bus id (the physical device, whatever index CUDA_VISIBLE_DEVICES gave it); on
// failure "" and the reason in *error. It must not throw: the node's ranks exchange it next.
std::string pci_bus_id([[maybe_unused]] int gpu, [[maybe_unused]] std::string* error) {
#ifdef SAMOUT_HAVE_CUDA
  char id[64] = {0};
  const cudaError_t rc = cudaDeviceGetPCIBusId(id, sizeof(id), gpu);
  if (rc == cudaSuccess) return id;
  *error = "cudaDeviceGetPCIBusId(" + std::to_string(gpu) + ") failed: " + cudaGetErrorString(rc);
#endif
  return "";
}
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
  if (g_node != MPI_COMM_NULL) SAMOUT_MPI_CHECK(MPI_Comm_free(&g_node));
  g_node = local;  // kept for select_device
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  ctx.host = host;
  g_rank = ctx.rank;
  g_host = ctx.host;
  return ctx;
}

void select_device(DistContext& ctx, DeviceRequest device, CommRequest comm) {
  GpuView view;
  view.local_rank = ctx.local_rank;
  view.local_world = ctx.local_world;
  view.visible = torch::cuda::is_available() ? torch::cuda::device_count() : 0;
  view.cuda_visible_devices = std::getenv("CUDA_VISIBLE_DEVICES");
  view.host = ctx.host;
  DeviceChoice c = choose_device(view, device, comm);
  std::string why = c.refusal;
  const std::string mine = why.empty() && c.gpu >= 0 ? pci_bus_id(c.gpu, &why) : "";
  // Every rank of the node gets here, refused or not: the exchange is a collective.
  const std::vector<std::string> ids = gather_on_node(mine);
  const auto [a, b] = first_shared(ids);
  if (why.empty() && a >= 0) {
    if (c.comm == CommKind::kNccl) {
      why = "local ranks " + std::to_string(a) + " and " + std::to_string(b) + " on host " +
            ctx.host + " were given the same GPU (PCI " + ids[a] +
            "; is one CUDA_VISIBLE_DEVICES set for every rank?). NCCL needs one GPU per rank; "
            "--comm=mpi lets ranks share one, for testing";
    } else {
      c.shared = true;
    }
  }
  require(why.empty(), why);
  ctx.comm = c.comm;
  if (c.gpu < 0) return;
  if (c.shared && ctx.local_rank == 0) {
    LOG(WARNING) << ctx.local_world << " ranks share " << view.visible << " GPU(s) on host "
                 << ctx.host
                 << " (--comm=mpi, gradients staged through host memory): for testing multi-rank "
                    "logic, not for speed";
  }
  ctx.device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(c.gpu));
#ifdef SAMOUT_HAVE_CUDA
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(c.gpu));  // every later CUDA call lands here
#endif
}

void barrier() { SAMOUT_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); }

void finalize_distributed() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return;
  if (g_node != MPI_COMM_NULL) MPI_Comm_free(&g_node);
  MPI_Finalize();
}

}  // namespace samout::dist
