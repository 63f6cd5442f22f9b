#include "samout/train/step_timer.h"

#ifdef SAMOUT_HAVE_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#endif

namespace samout::train {

#ifdef SAMOUT_HAVE_CUDA
// kNumPhases + 1 events a step, in a row: its start, then the end of each phase (every step marks
// them all, in order). Events are kept for reuse across windows.
struct StepTimer::CudaMarks {
  std::vector<at::cuda::CUDAEvent> events;
  size_t used = 0;  // recorded since the last take()

  void record() {
    if (used == events.size()) events.emplace_back(cudaEventDefault);  // timing enabled
    events[used++].record(at::cuda::getCurrentCUDAStream());
  }
};
#else
struct StepTimer::CudaMarks {};
#endif

StepTimer::StepTimer([[maybe_unused]] torch::Device device) {
#ifdef SAMOUT_HAVE_CUDA
  if (device.is_cuda()) cuda_ = std::make_unique<CudaMarks>();
#endif
}

StepTimer::~StepTimer() = default;

void StepTimer::start_step() {
#ifdef SAMOUT_HAVE_CUDA
  if (cuda_) {
    cuda_->record();
    return;
  }
#endif
  last_ = std::chrono::steady_clock::now();
}

void StepTimer::mark(Phase phase) {
  const int i = static_cast<int>(phase);
#ifdef SAMOUT_HAVE_CUDA
  if (cuda_) {
    cuda_->record();
    return;
  }
#endif
  const auto now = std::chrono::steady_clock::now();
  host_ms_[i] += std::chrono::duration<double, std::milli>(now - last_).count();
  last_ = now;
}

std::array<double, kNumPhases> StepTimer::take() {
  std::array<double, kNumPhases> ms{};
#ifdef SAMOUT_HAVE_CUDA
  if (cuda_) {
    const auto& e = cuda_->events;
    if (cuda_->used > 0) e[cuda_->used - 1].synchronize();
    for (size_t k = 0; k + 1 < cuda_->used; ++k) {
      const size_t phase = k % (kNumPhases + 1);  // kNumPhases: from a step's end to the next start
      if (phase < kNumPhases) ms[phase] += e[k].elapsed_time(e[k + 1]);
    }
    cuda_->used = 0;
    return ms;
  }
#endif
  ms = host_ms_;
  host_ms_ = {};
  return ms;
}

}  // namespace samout::train
