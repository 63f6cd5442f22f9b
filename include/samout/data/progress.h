// Progress of a long pass over bytes: a redrawn bar on a terminal, plain lines in a log.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace samout::data {

class Progress {
 public:
  // Writes to `out` (stdout by default, keeping stderr for the one-line error contract).
  // interactive: -1 detects a terminal on `out`, 0 forces log lines, 1 forces the bar.
  Progress(std::string label, int64_t total_bytes, int interactive = -1, FILE* out = stdout);
  void update(int64_t done_bytes);  // cheap to call often: draws at most 10 times a second
  void finish();                    // final line with the average rate

 private:
  void draw(bool final);

  std::string label_;
  int64_t total_, done_ = 0;
  bool tty_;
  FILE* out_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace samout::data
