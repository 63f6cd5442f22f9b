// Distributed start-up in one place: MPI, the rank's place on its node, its device and the
// communicator kind. Started without mpirun, `samout_ddp` is a world of one (Open MPI's singleton).
#pragma once

#include <torch/torch.h>

#include <string>

namespace samout::dist {

// How gradients and parameters travel between ranks (dist/communicator.h).
enum class CommKind { kMpi, kNccl };

// What --device and --comm ask for (parsed in train/flags.cpp); select_device() decides.
enum class DeviceRequest { kAuto, kCpu, kCuda };
enum class CommRequest { kAuto, kNccl, kMpi };

struct DistContext {
  int rank = 0, world = 1;              // in MPI_COMM_WORLD
  int local_rank = 0, local_world = 1;  // among the ranks on this node (MPI_COMM_TYPE_SHARED)
  torch::Device device = torch::kCPU;  // one GPU per local rank (or shared, --comm=mpi), or the CPU
  CommKind comm = CommKind::kMpi;
  std::string host;

  bool is_root() const { return rank == 0; }
};

// MPI_Init_thread (MPI_THREAD_MULTIPLE: autograd and checkpoint threads may call MPI), the rank,
// and the rank's place on its node. The device is CPU until select_device().
DistContext init_distributed(int* argc, char*** argv);

// Device (auto: a GPU when one is visible) and communicator (auto: NCCL on GPUs, MPI on CPUs). One
// GPU per local rank (cudaSetDevice); --comm=mpi lets ranks share one, for testing. Throws
// UsageError for cuda with no GPU, for more ranks than GPUs on a node under NCCL, and for NCCL on
// the CPU.
void select_device(DistContext& ctx, DeviceRequest device, CommRequest comm);

// Blocks until every rank arrives (used at start-up and shutdown only).
void barrier();

// MPI_Finalize, if MPI was initialised and not yet finalised.
void finalize_distributed();

}  // namespace samout::dist
