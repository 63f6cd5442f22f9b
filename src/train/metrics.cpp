#include "samout/train/metrics.h"

#include <cstdio>
#include <filesystem>

#include "samout/common/error.h"
#include "samout/common/strings.h"

namespace samout::train {

std::string JsonLine::str() const {
  return j_.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

MetricsFile::MetricsFile(const std::string& path) {
  if (path.empty()) return;
  std::error_code ec;  // a missing run folder is made; failing that, open reports the problem
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  f_.open(path, std::ios::app);
  require(f_.is_open(), "--metrics_file: cannot open " + path + " for writing");
}

void MetricsFile::write(const JsonLine& line) {
  if (f_.is_open()) f_ << line.str() << std::endl;
}

JsonLine metrics_line(const StepStats& s) {
  JsonLine j;
  j.add("step", s.step).add("loss", s.loss).add("lr", s.lr).add("grad_norm", s.grad_norm);
  j.add("skipped_steps", s.skipped_steps);
  j.add("tokens_per_s", s.tokens_per_s).add("tokens_per_s_per_rank", s.tokens_per_s / s.world);
  j.add("step_ms", s.step_ms).add("data_ms", s.data_ms);
  j.add("compute_ms", s.compute_ms).add("comm_wait_ms", s.comm_wait_ms).add("comm_mb", s.comm_mb);
  j.add("optimizer_ms", s.optimizer_ms);
  if (s.mfu > 0) j.add("mfu", s.mfu);
  j.add(s.on_gpu ? "peak_mem_mb" : "peak_rss_mb", s.peak_mem_mb);
  j.add("tokens", s.tokens).add("eta_s", s.eta_s);
  return j;
}

std::string log_line(const StepStats& s) {
  char mfu[32] = "";
  if (s.mfu > 0) std::snprintf(mfu, sizeof(mfu), " | MFU %.1f%%", 100 * s.mfu);
  char line[512];
  std::snprintf(
      line, sizeof(line),
      "step %lld/%lld | loss %.4f | lr %.3g | gnorm %.3f | %.0f tok/s (%.0f/rank) | "
      "%.1f ms/step: data %.1f, compute %.1f, comm wait %.1f (%.3g MB), optim %.1f%s | ETA %s",
      static_cast<long long>(s.step), static_cast<long long>(s.steps), s.loss, s.lr, s.grad_norm,
      s.tokens_per_s, s.tokens_per_s / s.world, s.step_ms, s.data_ms, s.compute_ms, s.comm_wait_ms,
      s.comm_mb, s.optimizer_ms, mfu, format_duration(s.eta_s).c_str());
  return line;
}

}  // namespace samout::train
