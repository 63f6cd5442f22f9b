// Tests of the generation Session on CUDA (ctest label gpu): the step replayed as a CUDA graph
// against eager steps, and eager steps on the GPU against eager steps on the CPU (fp32, the same
// weights). Without a GPU every test is skipped ("no CUDA device"), which ctest reports as skipped.
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

}  // namespace
}  // namespace samout::model
