#include "samout/train/metrics.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "samout/common/error.h"

namespace samout::train {

JsonLine& JsonLine::add(const std::string& key, double v) {
  // JSON has no NaN or Infinity: a non-finite number is written as null (json.loads reads None).
  if (std::isfinite(v)) {
    j_[key] = v;
  } else {
    j_[key] = nullptr;
  }
  return *this;
}

JsonLine& JsonLine::add(const std::string& key, int64_t v) {
  j_[key] = v;
  return *this;
}

JsonLine& JsonLine::add(const std::string& key, bool v) {
  j_[key] = v;
  return *this;
}

JsonLine& JsonLine::add(const std::string& key, const std::string& v) {
  j_[key] = v;
  return *this;
}

std::string JsonLine::str() const {
  return j_.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

MetricsFile::MetricsFile(const std::string& path) {
  if (path.empty()) return;
  std::error_code ec;  // a missing run folder is made; failing that, fopen reports the problem
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  f_ = std::fopen(path.c_str(), "a");
  require(f_ != nullptr, "--metrics_file: cannot open " + path + " for writing");
}

MetricsFile::~MetricsFile() {
  if (f_) std::fclose(f_);
}

void MetricsFile::write(const JsonLine& line) {
  if (!f_) return;
  std::fprintf(f_, "%s\n", line.str().c_str());
  std::fflush(f_);
}

std::string format_duration(double s) {
  char buf[32];
  if (!std::isfinite(s) || s < 0) return "?";
  if (s < 60) {
    std::snprintf(buf, sizeof(buf), "%.1fs", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof(buf), "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%dh%02dm", static_cast<int>(s) / 3600,
                  (static_cast<int>(s) % 3600) / 60);
  }
  return buf;
}

}  // namespace samout::train
