// Distributed start-up in one place: MPI, the rank's place on its node, its device and the
// communicator kind. Started without mpirun, `samout_ddp` is a world of one (Open MPI's singleton).
#pragma once

#include <torch/torch.h>

#include <string>

#include "samout/dist/device_choice.h"

namespace samout::dist {

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

// Device (auto: a GPU when one is visible) and communicator (auto: NCCL on GPUs, MPI on CPUs), as
// choose_device (device_choice.h) decides: one GPU per local rank, or GPU 0 of a rank bound to one
// GPU (cudaSetDevice); --comm=mpi lets ranks share one, for testing. Throws UsageError for cuda with
// no GPU, for more ranks than GPUs on a node or two ranks on one GPU under NCCL, and for NCCL on the
// CPU. A collective over the node's ranks (they compare their GPUs): every rank calls it, refused
// or not.
void select_device(DistContext& ctx, DeviceRequest device, CommRequest comm);

// Blocks until every rank arrives (used at start-up and shutdown only).
void barrier();

// MPI_Finalize (after freeing the node's communicator), if MPI was initialised and not yet
// finalised.
void finalize_distributed();

}  // namespace samout::dist
