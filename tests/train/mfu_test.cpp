// The peak table behind MFU (train/mfu.h).
#include "samout/train/mfu.h"

#include <gtest/gtest.h>

namespace samout::train {
namespace {

TEST(PeakTflops, CardsByTheNamesCudaReports) {
  EXPECT_DOUBLE_EQ(peak_tflops("NVIDIA H100 80GB HBM3", MathMode::kBf16), 989.4);
  EXPECT_DOUBLE_EQ(peak_tflops("NVIDIA H100 80GB HBM3", MathMode::kTf32), 494.7);
  EXPECT_DOUBLE_EQ(peak_tflops("NVIDIA H100 80GB HBM3", MathMode::kFp32), 66.9);
  EXPECT_DOUBLE_EQ(peak_tflops("NVIDIA H100 PCIe", MathMode::kBf16), 756.0);
  EXPECT_DOUBLE_EQ(peak_tflops("NVIDIA H200", MathMode::kBf16), 989.4);
  EXPECT_DOUBLE_EQ(peak_tflops("NVIDIA A100-SXM4-80GB", MathMode::kBf16), 312.0);
  EXPECT_DOUBLE_EQ(peak_tflops("NVIDIA A100 80GB PCIe", MathMode::kTf32), 156.0);
  EXPECT_DOUBLE_EQ(peak_tflops("NVIDIA A100-PCIE-40GB", MathMode::kFp32), 19.5);
}

TEST(PeakTflops, UnknownCardsHaveNoPeak) {
  EXPECT_EQ(peak_tflops("NVIDIA GeForce RTX 4090", MathMode::kBf16), 0.0);
  EXPECT_EQ(peak_tflops("", MathMode::kFp32), 0.0);
}

TEST(Mfu, SixNFlopsPerToken) {
  // 100M parameters at 1M tokens/s: 6e14 FLOP/s, 60% of a 1000 TFLOP/s peak.
  EXPECT_NEAR(mfu(1e6, 1e8, 1000.0), 0.6, 1e-12);
  EXPECT_EQ(mfu(1e6, 1e8, 0.0), 0.0);
}

}  // namespace
}  // namespace samout::train
