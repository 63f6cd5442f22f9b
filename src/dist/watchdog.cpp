#include "samout/dist/watchdog.h"

#include <sstream>

namespace samout::dist {

Watchdog::Watchdog(double timeout_s, std::function<std::string()> error,
                   std::function<void(const std::string&)> on_failure,
                   std::chrono::microseconds poll, std::function<void()> on_start)
    : timeout_s_(timeout_s),
      error_(std::move(error)),
      on_failure_(std::move(on_failure)),
      poll_(poll),
      on_start_(std::move(on_start)),
      thread_([this] { loop(); }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Watchdog::watch(std::string what, int64_t step, std::function<bool()> done) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(timeout_s_));
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.push_back(Entry{std::move(what), step, std::move(done), deadline});
  }
  cv_.notify_all();
}

size_t Watchdog::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

bool Watchdog::failed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failed_;
}

void Watchdog::loop() {
  if (on_start_) {
    std::string why;
    try {
      on_start_();
    } catch (const std::exception& e) {
      why = std::string("the watchdog thread could not start: ") + e.what();
    }
    if (!why.empty()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        failed_ = true;
      }
      on_failure_(why);
      return;
    }
  }
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_ && !failed_) {
    // The communicator's error is checked even with nothing pending: NCCL reports a failed peer
    // asynchronously, possibly between steps.
    while (!entries_.empty() && entries_.front().done()) entries_.pop_front();
    std::string why = error_ ? error_() : std::string();
    if (!entries_.empty()) {
      const Entry& e = entries_.front();
      const std::string pending = e.what + " of step " + std::to_string(e.step);
      if (!why.empty()) {
        why += " (pending: " + pending + ")";
      } else if (std::chrono::steady_clock::now() > e.deadline) {
        std::ostringstream m;  // prints the timeout as it was given ("0.1", not "0.100000")
        m << pending << " did not complete within --comm_timeout_s=" << timeout_s_
          << " s (a peer died, hangs or is far behind)";
        why = m.str();
      }
    }
    if (!why.empty()) {
      failed_ = true;
      lock.unlock();
      on_failure_(why);
      return;
    }
    cv_.wait_for(lock, poll_, [this] { return stop_; });
  }
}

}  // namespace samout::dist
