// train/metrics.h: one StepStats value makes both the log line and the metrics line.
#include "samout/train/metrics.h"

#include <gtest/gtest.h>

#include <limits>

namespace samout::train {
namespace {

StepStats sample() {
  StepStats s;
  s.step = 20;
  s.steps = 100;
  s.loss = 5.12345;
  s.lr = 1e-3;
  s.grad_norm = 1.2345;
  s.skipped_steps = 1;
  s.tokens_per_s = 2517;
  s.world = 2;
  s.step_ms = 623.14;
  s.data_ms = 0.1;
  s.compute_ms = 500.2;
  s.comm_wait_ms = 20.3;
  s.comm_mb = 12.5;
  s.optimizer_ms = 100.4;
  s.peak_mem_mb = 512;
  s.tokens = 31360;
  s.eta_s = 185;
  return s;
}

TEST(StepStats, LogLine) {
  auto s = sample();
  EXPECT_EQ(
      log_line(s),
      "step 20/100 | loss 5.1235 | lr 0.001 | gnorm 1.234 | 2517 tok/s (1258/rank) | "
      "623.1 ms/step: data 0.1, compute 500.2, comm wait 20.3 (12.5 MB), optim 100.4 | ETA 3m05s");
  s.mfu = 0.4123;
  EXPECT_NE(log_line(s).find("optim 100.4 | MFU 41.2% | ETA 3m05s"), std::string::npos)
      << log_line(s);
}

TEST(StepStats, MetricsLineHasTheSameFiguresInAFixedOrder) {
  auto s = sample();
  const auto j = nlohmann::ordered_json::parse(metrics_line(s).str());
  std::vector<std::string> keys;
  for (auto& [k, v] : j.items()) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"step", "loss", "lr", "grad_norm", "skipped_steps",
                                            "tokens_per_s", "tokens_per_s_per_rank", "step_ms",
                                            "data_ms", "compute_ms", "comm_wait_ms", "comm_mb",
                                            "optimizer_ms", "peak_rss_mb", "tokens", "eta_s"}));
  EXPECT_EQ(j["step"], 20);
  EXPECT_DOUBLE_EQ(j["loss"].get<double>(), 5.12345);
  EXPECT_DOUBLE_EQ(j["tokens_per_s_per_rank"].get<double>(), 1258.5);
  EXPECT_DOUBLE_EQ(j["comm_mb"].get<double>(), 12.5);
  s.on_gpu = true;
  s.mfu = 0.5;
  s.loss = std::numeric_limits<double>::quiet_NaN();  // written as null, as documented
  const auto g = nlohmann::ordered_json::parse(metrics_line(s).str());
  EXPECT_TRUE(g["loss"].is_null());
  EXPECT_DOUBLE_EQ(g["mfu"].get<double>(), 0.5);
  EXPECT_TRUE(g.contains("peak_mem_mb"));
  EXPECT_FALSE(g.contains("peak_rss_mb"));
}

}  // namespace
}  // namespace samout::train
