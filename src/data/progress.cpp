// Terminal progress bar / log progress lines (see progress.h).
#include "samout/data/progress.h"

#include <unistd.h>

#include <algorithm>

#include "samout/common/strings.h"

namespace samout::data {

Progress::Progress(std::string label, int64_t total_bytes, int interactive, FILE* out)
    : label_(std::move(label)),
      total_(std::max<int64_t>(1, total_bytes)),
      tty_(interactive < 0 ? ::isatty(::fileno(out)) != 0 : interactive != 0),
      out_(out),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

void Progress::update(int64_t done_bytes) {
  done_ = done_bytes;
  const auto now = std::chrono::steady_clock::now();
  // A log gets a line every 10 s; a terminal is redrawn 10 times a second.
  const auto every = tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(10000);
  if (now - last_draw_ < every) return;
  last_draw_ = now;
  draw(false);
}

void Progress::finish() {
  done_ = std::max(done_, total_);
  draw(true);
}

void Progress::draw(bool final) {
  const double secs = std::max(
      1e-9, std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  const double frac = std::min(1.0, static_cast<double>(done_) / total_);
  const double rate = done_ / secs;  // bytes/s
  const double eta = rate > 0 ? (total_ - done_) / rate : 0;
  char tail[160];
  if (final)
    std::snprintf(tail, sizeof tail, "%.1f MB in %s, %.1f MB/s", done_ / 1e6,
                  format_duration(secs).c_str(), rate / 1e6);
  else
    std::snprintf(tail, sizeof tail, "%5.1f%% %.1f/%.1f MB %.1f MB/s ETA %s", 100 * frac,
                  done_ / 1e6, total_ / 1e6, rate / 1e6, format_duration(eta).c_str());
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(frac * kWidth);
    const std::string bar = std::string(filled, '#') + std::string(kWidth - filled, '.');
    std::fprintf(out_, "\r\x1b[K%s [%s] %s%s", label_.c_str(), bar.c_str(), tail,
                 final ? "\n" : "");
  } else {
    std::fprintf(out_, "%s: %s\n", label_.c_str(), tail);
  }
  std::fflush(out_);
}

}  // namespace samout::data
