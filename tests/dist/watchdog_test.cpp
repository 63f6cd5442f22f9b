// The collective watchdog (dist/watchdog.h), on the CPU: its logic does not depend on CUDA or NCCL.
#include "samout/dist/watchdog.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace samout::dist {
namespace {

using namespace std::chrono_literals;

struct Failures {
  std::mutex mu;
  std::vector<std::string> messages;
  void add(const std::string& m) {
    std::lock_guard<std::mutex> lock(mu);
    messages.push_back(m);
  }
  size_t count() {
    std::lock_guard<std::mutex> lock(mu);
    return messages.size();
  }
};

bool wait_for(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return cond();
}

TEST(Watchdog, CompletedCollectivesAreDropped) {
  Failures f;
  Watchdog w(0.05, nullptr, [&](const std::string& m) { f.add(m); });
  std::atomic<bool> done{false};
  w.watch("NCCL all-reduce of gradient bucket 1/2", 7, [&] { return done.load(); });
  EXPECT_EQ(w.pending(), 1u);
  done = true;
  EXPECT_TRUE(wait_for([&] { return w.pending() == 0; }, 1000ms));
  std::this_thread::sleep_for(100ms);  // past the deadline: nothing pending, so no failure
  EXPECT_EQ(f.count(), 0u);
  EXPECT_FALSE(w.failed());
}

TEST(Watchdog, AMissedDeadlineNamesTheCollectiveAndTheStep) {
  Failures f;
  Watchdog w(0.1, nullptr, [&](const std::string& m) { f.add(m); });
  w.watch("NCCL all-reduce of gradient bucket 1/3", 41, [] { return true; });
  w.watch("NCCL all-reduce of gradient bucket 2/3", 42, [] { return false; });  // a dead peer
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(wait_for([&] { return f.count() == 1; }, 5000ms));
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(waited, 0.09);
  EXPECT_NE(f.messages[0].find("NCCL all-reduce of gradient bucket 2/3 of step 42"),
            std::string::npos)
      << f.messages[0];
  EXPECT_NE(f.messages[0].find("--comm_timeout_s=0.1"), std::string::npos) << f.messages[0];
  EXPECT_TRUE(w.failed());
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(f.count(), 1u);  // reported once
}

TEST(Watchdog, AnAsynchronousErrorFailsAtOnceEvenWithNothingPending) {
  Failures f;
  std::atomic<bool> broken{false};
  Watchdog w(
      1000.0,
      [&] { return broken ? std::string("asynchronous error: remote process exited") : ""; },
      [&](const std::string& m) { f.add(m); });
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(f.count(), 0u);
  broken = true;
  ASSERT_TRUE(wait_for([&] { return f.count() == 1; }, 2000ms));
  EXPECT_NE(f.messages[0].find("remote process exited"), std::string::npos);
}

TEST(Watchdog, TheErrorNamesThePendingCollective) {
  Failures f;
  std::atomic<bool> broken{false};
  Watchdog w(
      1000.0, [&] { return broken ? std::string("asynchronous error: unhandled") : ""; },
      [&](const std::string& m) { f.add(m); });
  w.watch("NCCL all-gather of the parameters", 9, [] { return false; });
  broken = true;
  ASSERT_TRUE(wait_for([&] { return f.count() == 1; }, 2000ms));
  EXPECT_NE(f.messages[0].find("pending: NCCL all-gather of the parameters of step 9"),
            std::string::npos)
      << f.messages[0];
}

// The CUDA device is per-thread state: the NCCL communicator's on_start sets it on the watchdog's
// thread. A thread_local stands for it here: every query must see what on_start set.
thread_local int t_device = -1;

TEST(Watchdog, OnStartRunsOnItsThreadBeforeAnyQuery) {
  Failures f;
  std::mutex mu;
  std::vector<int> seen;  // t_device at each error() and done() call
  std::atomic<int> starts{0};
  std::thread::id start_thread;
  const auto see = [&] {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(t_device);
  };
  std::atomic<bool> done{false};
  {
    Watchdog w(
        1000.0,
        [&] {
          see();
          return std::string();
        },
        [&](const std::string& m) { f.add(m); }, Watchdog::kDefaultPoll,
        [&] {
          std::this_thread::sleep_for(20ms);  // a slow start must still come first
          start_thread = std::this_thread::get_id();
          t_device = 3;
          ++starts;
        });
    w.watch("NCCL all-reduce of gradient bucket 1/1", 1, [&] {
      see();
      return done.load();
    });
    ASSERT_TRUE(wait_for(
        [&] {
          std::lock_guard<std::mutex> lock(mu);
          return seen.size() >= 4;
        },
        2000ms));
    done = true;
    EXPECT_TRUE(wait_for([&] { return w.pending() == 0; }, 1000ms));
  }
  EXPECT_EQ(starts.load(), 1);
  EXPECT_NE(start_thread, std::this_thread::get_id());
  EXPECT_EQ(t_device, -1);  // this thread's own device is untouched
  for (int d : seen) EXPECT_EQ(d, 3);
  EXPECT_EQ(f.count(), 0u);
}

TEST(Watchdog, AFailedStartFailsAndPollsNothing) {
  Failures f;
  std::atomic<int> queries{0};
  Watchdog w(
      1000.0,
      [&] {
        ++queries;
        return std::string();
      },
      [&](const std::string& m) { f.add(m); }, Watchdog::kDefaultPoll,
      [] { throw std::runtime_error("CUDA error: invalid device ordinal"); });
  ASSERT_TRUE(wait_for([&] { return f.count() == 1; }, 2000ms));
  EXPECT_NE(f.messages[0].find("invalid device ordinal"), std::string::npos) << f.messages[0];
  EXPECT_TRUE(w.failed());
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(queries.load(), 0);
}

}  // namespace
}  // namespace samout::dist
