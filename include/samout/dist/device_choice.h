// A rank's device and communicator as a pure function of what the rank sees (select_device in
// context.h calls it with torch::cuda::device_count() and getenv), so every case is tested without
// GPUs.
//
// One GPU per rank, never two ranks on one GPU under NCCL:
//   - a rank that sees at least as many GPUs as its node has ranks takes GPU local_rank;
//   - a rank that sees exactly one GPU, named by a one-entry CUDA_VISIBLE_DEVICES, is bound to it
//     (srun --gpus-per-task=1 or --gpu-bind, which set CUDA_VISIBLE_DEVICES per task): GPU 0;
//   - otherwise the node has more ranks than GPUs (an unset CUDA_VISIBLE_DEVICES means the rank sees
//     all of the node's): refused under NCCL, shared round-robin under --comm=mpi (for testing).
// The SLURM_* variables are not read: Slurm's binding already shows in CUDA_VISIBLE_DEVICES and the
// device count, and other launchers bind the same way. A binding is not taken on trust either:
// select_device compares the chosen GPUs' PCI bus ids across the node (first_shared), which catches
// one CUDA_VISIBLE_DEVICES=0 exported to every rank.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace samout::dist {

// How gradients and parameters travel between ranks (dist/communicator.h).
enum class CommKind { kMpi, kNccl };

// What --device and --comm ask for (parsed in train/flags.cpp); select_device() decides.
enum class DeviceRequest { kAuto, kCpu, kCuda };
enum class CommRequest { kAuto, kNccl, kMpi };

// What one rank sees.
struct GpuView {
  int local_rank = 0, local_world = 1;         // among the ranks on this node
  int64_t visible = 0;                         // CUDA devices this process sees; 0 without CUDA
  const char* cuda_visible_devices = nullptr;  // the environment variable; null when unset
  std::string host;                            // named in the messages
};

struct DeviceChoice {
  CommKind comm = CommKind::kMpi;
  int gpu = -1;         // the CUDA device index; -1: the CPU
  bool shared = false;  // this node's ranks share GPUs (--comm=mpi only)
  std::string refusal;  // non-empty: why the request cannot be met (a UsageError's message)
};

// Device (auto: a GPU when one is visible) and communicator (auto: NCCL on GPUs, MPI on CPUs).
DeviceChoice choose_device(const GpuView& view, DeviceRequest device, CommRequest comm);

// ids[r]: an identity of local rank r's GPU (its PCI bus id; "" for none). The first two local ranks
// on one GPU, or {-1, -1}.
std::pair<int, int> first_shared(const std::vector<std::string>& ids);

}  // namespace samout::dist
