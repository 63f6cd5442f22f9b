// A watchdog for collectives that run asynchronously on a device (NCCL), as in PyTorch's
// ProcessGroupNCCL: the host never blocks on one, so nobody would notice one that never finishes. A
// thread polls each pending collective and the communicator's asynchronous error; on an error or a
// missed deadline it calls `on_failure` with a message naming the collective and the step.
// It knows nothing of CUDA or NCCL (a collective is a `done()` predicate, the communicator's health
// an `error()` function), so it is tested on the CPU.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace samout::dist {

class Watchdog {
 public:
  static constexpr std::chrono::microseconds kDefaultPoll{500};

  // error(): "" while healthy, else what went wrong. on_failure(message) must not return to the
  // watchdog's caller in production (it aborts the job); in tests it may, and the watchdog stops.
  // on_start() runs first on the watchdog's thread, before any error() or done(): the NCCL
  // communicator sets its rank's CUDA device there, since a new thread starts on device 0. If it
  // throws, on_failure gets its message and nothing is polled.
  Watchdog(double timeout_s, std::function<std::string()> error,
           std::function<void(const std::string&)> on_failure,
           std::chrono::microseconds poll = kDefaultPoll, std::function<void()> on_start = nullptr);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // A collective was enqueued: `what` names it ("all-reduce of bucket 2/5"), `step` is the
  // training step it belongs to. Its deadline is now + timeout.
  void watch(std::string what, int64_t step, std::function<bool()> done);
  // Collectives not yet seen complete.
  size_t pending() const;
  bool failed() const;

 private:
  struct Entry {
    std::string what;
    int64_t step;
    std::function<bool()> done;
    std::chrono::steady_clock::time_point deadline;
  };
  void loop();

  const double timeout_s_;
  const std::function<std::string()> error_;
  const std::function<void(const std::string&)> on_failure_;
  const std::chrono::microseconds poll_;
  const std::function<void()> on_start_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Entry> entries_;  // in enqueue order: on one stream they complete in this order
  bool stop_ = false, failed_ = false;
  std::thread thread_;
};

}  // namespace samout::dist
