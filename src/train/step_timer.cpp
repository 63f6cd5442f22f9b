#include "samout/train/step_timer.h"

#ifdef SAMOUT_HAVE_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#endif

namespace samout::train {

#ifdef SAMOUT_HAVE_CUDA
struct StepTimer::CudaMarks {
  // Per step: the start and the end of each phase. Events are kept for reuse across windows.
  std::vector<std::array<std::unique_ptr<at::cuda::CUDAEvent>, kNumPhases + 1>> steps;
  size_t used = 0;

  at::cuda::CUDAEvent& event(size_t step, int index) {
    if (steps.size() <= step) steps.resize(step + 1);
    auto& e = steps[step][index];
    if (!e) e = std::make_unique<at::cuda::CUDAEvent>(cudaEventDefault);  // timing enabled
    return *e;
  }
};
#else
struct StepTimer::CudaMarks {};
#endif

StepTimer::StepTimer(torch::Device device) : device_(device) {
#ifdef SAMOUT_HAVE_CUDA
  if (device_.is_cuda()) cuda_ = std::make_unique<CudaMarks>();
#endif
}

StepTimer::~StepTimer() = default;

void StepTimer::start_step() {
#ifdef SAMOUT_HAVE_CUDA
  if (cuda_) {
    cuda_->event(cuda_->used++, 0).record(at::cuda::getCurrentCUDAStream());
    return;
  }
#endif
  last_ = std::chrono::steady_clock::now();
}

void StepTimer::mark(Phase phase) {
  const int i = static_cast<int>(phase);
#ifdef SAMOUT_HAVE_CUDA
  if (cuda_) {
    cuda_->event(cuda_->used - 1, i + 1).record(at::cuda::getCurrentCUDAStream());
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
    if (cuda_->used > 0) cuda_->steps[cuda_->used - 1][kNumPhases]->synchronize();
    for (size_t s = 0; s < cuda_->used; ++s) {
      auto& e = cuda_->steps[s];
      for (int i = 0; i < kNumPhases; ++i)
        if (e[i] && e[i + 1]) ms[i] += e[i]->elapsed_time(*e[i + 1]);
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
