// Distributed start-up in one place: MPI, the rank's place on its node, its device and the
// communicator kind.
//
// `samout_ddp` started without mpirun is a world of one (Open MPI's singleton start), which is the
// single-GPU and CPU default; under mpirun or `srun --mpi=pmix` every rank gets its own rank.
#pragma once

#include <torch/torch.h>

#include <string>

namespace samout::dist {

// How gradients and parameters travel between ranks: MPI (CPU ranks, or CUDA tensors staged through
// host memory) or NCCL (CUDA ranks, one GPU each).
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

// Device and communicator choice. device: auto (a GPU when one is visible), cpu or cuda.
// comm: auto (NCCL on GPUs, MPI on CPUs), nccl or mpi. One GPU per local rank
// (cudaSetDevice); with --comm=mpi several ranks may share a GPU (NCCL refuses that), which is for
// testing multi-rank logic on one card. Throws UsageError when "cuda" is asked for and there is
// none, when a node has more ranks than GPUs under NCCL, and for NCCL on the CPU.
void select_device(DistContext& ctx, DeviceRequest device, CommRequest comm);

// Blocks until every rank arrives (used at start-up and shutdown only).
void barrier();

// MPI_Finalize, if MPI was initialised and not yet finalised.
void finalize_distributed();

}  // namespace samout::dist
