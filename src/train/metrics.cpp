#include "samout/train/metrics.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "samout/common/error.h"

namespace samout::train {

JsonLine& JsonLine::add(const std::string& key, double v) {
  char buf[64];
  if (std::isfinite(v)) {
    std::snprintf(buf, sizeof(buf), "%.9g", v);
  } else {
    std::snprintf(buf, sizeof(buf), "null");  // JSON has no NaN or Infinity
  }
  fields_.emplace_back(key, buf);
  return *this;
}

JsonLine& JsonLine::add(const std::string& key, int64_t v) {
  fields_.emplace_back(key, std::to_string(v));
  return *this;
}

JsonLine& JsonLine::add(const std::string& key, bool v) {
  fields_.emplace_back(key, v ? "true" : "false");
  return *this;
}

JsonLine& JsonLine::add(const std::string& key, const std::string& v) {
  std::string q = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') q += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    q += c;
  }
  fields_.emplace_back(key, q + "\"");
  return *this;
}

std::string JsonLine::str() const {
  std::string s = "{";
  for (size_t i = 0; i < fields_.size(); ++i) {
    if (i) s += ", ";
    s += "\"" + fields_[i].first + "\": " + fields_[i].second;
  }
  return s + "}";
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
