// Where a training step's time goes: data (batch to the device), forward+backward, communication
// wait, optimizer. On the CPU these are host clock intervals. On a GPU the host only queues work,
// so host clocks would measure queueing: there each phase boundary is a CUDA event on the compute
// stream, and the phases are the GPU-timeline intervals between them (a GPU starved by the host
// shows it as time in the phase it waited in). Reading them (take()) waits for the last event, so
// the trainer calls it only at --log_every steps.
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
  StepTimer(const StepTimer&) = delete;
  StepTimer& operator=(const StepTimer&) = delete;

  void start_step();
  // The end of `phase` (phases are marked in order within a step).
  void mark(Phase phase);
  // Milliseconds per phase, summed over the steps since the last take().
  std::array<double, kNumPhases> take();

 private:
  struct CudaMarks;  // the CUDA events of the steps since the last take()
  torch::Device device_;
  std::array<double, kNumPhases> host_ms_{};
  std::chrono::steady_clock::time_point last_;
  std::unique_ptr<CudaMarks> cuda_;
};

}  // namespace samout::train
