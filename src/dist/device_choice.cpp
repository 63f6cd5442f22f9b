#include "samout/dist/device_choice.h"

#include <map>

namespace samout::dist {

namespace {

// Entries of CUDA_VISIBLE_DEVICES ("0,2", "GPU-<uuid>", "MIG-<uuid>"); none when unset or empty.
size_t listed_devices(const char* env) {
  if (env == nullptr || *env == '\0') return 0;
  size_t n = 1;
  for (const char* p = env; *p; ++p) n += *p == ',';
  return n;
}

}  // namespace

DeviceChoice choose_device(const GpuView& view, DeviceRequest device, CommRequest comm) {
  DeviceChoice c;
  const int64_t gpus = view.visible;
  if (device == DeviceRequest::kCuda && gpus <= 0) {
    c.refusal = "--device=cuda but no CUDA device is visible";
    return c;
  }
  const bool cuda = device != DeviceRequest::kCpu && gpus > 0;
  if (!cuda) {
    if (comm == CommRequest::kNccl)
      c.refusal = "--comm=nccl needs CUDA devices; this run is on the CPU";
    return c;
  }
  c.comm = comm == CommRequest::kMpi ? CommKind::kMpi : CommKind::kNccl;
  if (view.local_world <= gpus) {
    c.gpu = view.local_rank;
    return c;
  }
  if (gpus == 1 && listed_devices(view.cuda_visible_devices) == 1) {
    c.gpu = 0;  // bound to its own GPU; first_shared checks that the binding is one GPU per rank
    return c;
  }
  if (c.comm == CommKind::kNccl) {
    const bool whole_node = view.cuda_visible_devices == nullptr;
    c.refusal = std::to_string(view.local_world) + " ranks on host " + view.host + " but only " +
                std::to_string(gpus) + " GPU(s) visible to each" +
                (whole_node ? " (CUDA_VISIBLE_DEVICES is unset: all of the node's)" : "") +
                ". NCCL needs one GPU per rank: give each rank its own (e.g. srun "
                "--gpus-per-task=1); --comm=mpi lets ranks share one, for testing";
    return c;
  }
  c.gpu = static_cast<int>(view.local_rank % gpus);
  c.shared = true;
  return c;
}

std::pair<int, int> first_shared(const std::vector<std::string>& ids) {
  std::map<std::string, int> first;  // id -> the first local rank on it
  for (int r = 0; r < static_cast<int>(ids.size()); ++r) {
    if (ids[r].empty()) continue;
    const auto [it, fresh] = first.emplace(ids[r], r);
    if (!fresh) return {it->second, r};
  }
  return {-1, -1};
}

}  // namespace samout::dist
