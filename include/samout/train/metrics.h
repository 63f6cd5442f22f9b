// What a user sees of a run: the glog line every --log_every steps on rank 0, and the same fields
// as one JSON object per line in --metrics_file.
#pragma once

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

namespace samout::train {

// One JSON object, fields in the order added (nlohmann's ordered_json). Non-finite numbers are
// written as null (nlohmann's dump), which Python's json reads back as None.
class JsonLine {
 public:
  template <class T>
  JsonLine& add(const std::string& key, const T& v) {
    j_[key] = v;
    return *this;
  }
  std::string str() const;

 private:
  nlohmann::ordered_json j_ = nlohmann::ordered_json::object();
};

// One log window's figures (the steps since the last report), from which both the log line and the
// metrics line are made, so that the two always say the same thing.
struct StepStats {
  int64_t step = 0, steps = 0;  // steps done, of all
  double loss = 0, lr = 0, grad_norm = 0;
  int64_t skipped_steps = 0;  // non-finite steps skipped since the start
  double tokens_per_s = 0;    // whole job
  int world = 1;
  double step_ms = 0, data_ms = 0, compute_ms = 0, comm_wait_ms = 0, optimizer_ms = 0;  // per step
  double comm_mb = 0;   // per step: MB (10^6 bytes) this rank sent, dist::Communicator::bytes_sent
  double mfu = 0;       // 0 = unknown (not reported)
  bool on_gpu = false;  // peak_mem_mb is the device's peak allocation, else peak RSS
  double peak_mem_mb = 0;
  int64_t tokens = 0;  // tokens trained on since step 0
  double eta_s = 0;
};

JsonLine metrics_line(const StepStats& s);
// "step 20/100 | loss 5.1234 | lr 0.001 | gnorm 1.234 | 2517 tok/s (1258/rank) | 623.1 ms/step: data
// 0.1, compute 500.2, comm wait 20.3 (12.5 MB), optim 100.4 | ETA 49.8s" (and "| MFU 41.2%" when
// known).
std::string log_line(const StepStats& s);

class MetricsFile {
 public:
  // Opens `path` for appending (a resumed run continues the file); "" = no file.
  explicit MetricsFile(const std::string& path);
  void write(const JsonLine& line);  // one line, flushed

 private:
  std::ofstream f_;
};

}  // namespace samout::train
