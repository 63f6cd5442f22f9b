// Where a training step's time goes: data, forward+backward, communication wait, optimizer. On the
// CPU, host clock intervals. On a GPU the host only queues work, so each phase boundary is a CUDA
// event on the compute stream and phases are GPU-timeline intervals (a GPU starved by the host shows
// it in the phase it waited in). take() waits for the last event: call it at --log_every steps only.
#pragma once

#include <torch/torch.h>

#include <array>
#include <chrono>
#include <memory>
#include <vector>

namespace samout::train {

enum class Phase { kData = 0, kCompute, kComm, kOptimizer };
constexpr int kNumPhases = 4;

class StepTimer {
 public:
  explicit StepTimer(torch::Device device);
  ~StepTimer();

  void start_step();
  // The end of `phase` (phases are marked in order within a step).
  void mark(Phase phase);
  // Milliseconds per phase, summed over the steps since the last take().
  std::array<double, kNumPhases> take();

 private:
  struct CudaMarks;  // the CUDA events of the steps since the last take()
  std::array<double, kNumPhases> host_ms_{};
  std::chrono::steady_clock::time_point last_;
  std::unique_ptr<CudaMarks> cuda_;
};

}  // namespace samout::train
