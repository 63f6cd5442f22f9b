// Tests of the generation Session on CUDA (ctest label gpu): the step replayed as a CUDA graph
// against eager steps, and eager steps on the GPU against eager steps on the CPU (fp32, the same
// weights). Without a GPU every test is skipped ("no CUDA device"), which ctest reports as skipped.
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "samout/model/session.h"
#include "samout/ops/cummax_gate.h"
#include "session_fixture.h"

namespace samout::model {
namespace {

class SessionCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    if (!ops::cuda_kernels_compiled()) GTEST_SKIP() << "built without CUDA kernels";
  }
};

TEST_F(SessionCuda, CudaGraphMatchesEager) {
  auto model = tiny_model(4);
  model->to(torch::kCUDA);
  auto tokens = torch::randint(0, 97, {3, 20}, torch::kLong).to(torch::kCUDA);
  Session eager(model, false), graphed(model, true);
  expect_close(graphed.prefill(tokens.narrow(1, 0, 4)), eager.prefill(tokens.narrow(1, 0, 4)),
               "prefill");
  for (int64_t t = 4; t < 20; ++t) {
    auto want = eager.step(tokens.select(1, t)).clone();
    expect_close(graphed.step(tokens.select(1, t)), want, "step " + std::to_string(t));
  }
  EXPECT_TRUE(graphed.graph_captured());
  // A new prefill after capture: the graph's buffers take the new state.
  expect_close(graphed.prefill(tokens.narrow(1, 0, 2)), eager.prefill(tokens.narrow(1, 0, 2)),
               "re-prefill");
  for (int64_t t = 2; t < 6; ++t) {
    auto want = eager.step(tokens.select(1, t)).clone();
    expect_close(graphed.step(tokens.select(1, t)), want,
                 "step after re-prefill " + std::to_string(t));
  }
}

// The same weights (the same seed) on both devices, fp32, eager: the CPU session's steps run their
// products on the GEMV (B <= ops::kGemvMaxRows); the GPU session runs cuBLAS and the CUDA gate
// kernel. Logits and every layer's state agree within
// fp32 rounding (1e-4 of the largest value, as the CPU step test allows).
TEST_F(SessionCuda, GpuEagerMatchesCpuEager) {
  constexpr double kRtol = 1e-4;
  auto cpu_model = tiny_model(6, /*vocab_size=*/211, /*hidden=*/72, /*layers=*/2,
                              /*odd_layer_norm=*/true);
  auto gpu_model = tiny_model(6, 211, 72, 2, true);
  gpu_model->to(torch::kCUDA);
  for (int64_t B : {1, 3}) {
    SCOPED_TRACE("B=" + std::to_string(B));
    auto tokens = torch::randint(0, 211, {B, 24}, torch::kLong);
    Session cpu(cpu_model), gpu(gpu_model);
    const int64_t P = 7;
    expect_close(gpu.prefill(tokens.narrow(1, 0, P).to(torch::kCUDA)),
                 cpu.prefill(tokens.narrow(1, 0, P)), "prefill", kRtol);
    for (int64_t t = P; t < 24; ++t) {
      auto want = cpu.step(tokens.select(1, t));
      expect_close(gpu.step(tokens.select(1, t).to(torch::kCUDA)), want,
                   "step " + std::to_string(t), kRtol);
    }
    ASSERT_EQ(gpu.state().size(), cpu.state().size());
    for (size_t l = 0; l < cpu.state().size(); ++l)
      expect_close(gpu.state()[l], cpu.state()[l], "state of layer " + std::to_string(l), kRtol);
  }
}

// A model on the last GPU while GPU 0 is current (a rank's thread that never set its device): the
// session makes the model's device current around each launch, eager and graphed, and gives the
// caller's current device back.
TEST_F(SessionCuda, RunsOnTheModelsGpuWhateverIsCurrent) {
  const auto gpus = torch::cuda::device_count();
  if (gpus < 2) GTEST_SKIP() << "needs two GPUs, this machine has " << gpus;
  const torch::Device last(torch::kCUDA, static_cast<c10::DeviceIndex>(gpus - 1));
  c10::DeviceGuard current(torch::Device(torch::kCUDA, 0));
  const auto* cuda = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
  auto model = tiny_model(5);
  auto reference = tiny_model(5);  // the same weights, on the CPU
  model->to(last);
  auto tokens = torch::randint(0, 97, {2, 12}, torch::kLong);
  Session eager(model, false), graphed(model, true), cpu(reference);
  auto want = cpu.prefill(tokens.narrow(1, 0, 4));
  constexpr double kRtol = 1e-4;  // GPU against CPU, as above
  expect_close(eager.prefill(tokens.narrow(1, 0, 4).to(last)), want, "prefill", kRtol);
  expect_close(graphed.prefill(tokens.narrow(1, 0, 4).to(last)), want, "graphed prefill", kRtol);
  for (int64_t t = 4; t < 12; ++t) {
    want = cpu.step(tokens.select(1, t));
    expect_close(eager.step(tokens.select(1, t).to(last)), want, "step " + std::to_string(t),
                 kRtol);
    expect_close(graphed.step(tokens.select(1, t).to(last)), want,
                 "graphed step " + std::to_string(t), kRtol);
    EXPECT_EQ(cuda->getDevice().index(), 0) << "step " << t;
  }
  EXPECT_TRUE(graphed.graph_captured());
  EXPECT_EQ(graphed.state()[0].device(), last);
}

}  // namespace
}  // namespace samout::model
