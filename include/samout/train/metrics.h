// What a user sees of a run: the glog line every --log_every steps on rank 0, and the same fields
// as one JSON object per line in --metrics_file.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>

namespace samout::train {

// One JSON object, fields in the order added (nlohmann's ordered_json). Non-finite numbers are
// written as null, which Python's json reads back as None.
class JsonLine {
 public:
  JsonLine& add(const std::string& key, double v);
  JsonLine& add(const std::string& key, int64_t v);
  JsonLine& add(const std::string& key, const std::string& v);
  JsonLine& add(const std::string& key, bool v);
  std::string str() const;

 private:
  nlohmann::ordered_json j_ = nlohmann::ordered_json::object();
};

class MetricsFile {
 public:
  // Opens `path` for appending (a resumed run continues the file); "" = no file.
  explicit MetricsFile(const std::string& path);
  ~MetricsFile();
  MetricsFile(const MetricsFile&) = delete;
  MetricsFile& operator=(const MetricsFile&) = delete;
  void write(const JsonLine& line);  // one line, flushed

 private:
  std::FILE* f_ = nullptr;
};

std::string format_duration(double seconds);  // "1h02m", "3m05s", "12.3s"

}  // namespace samout::train
