// Errors that a user can cause (bad flags, bad files, bad data) and how programs report them.
//
// The contract, for every program in src/bin/: a user's mistake becomes a UsageError naming the
// offending value, printed as one line on stderr, and the program exits with 2, having written
// nothing. Bugs in our own code stay glog CHECKs (they abort loudly).
#pragma once

#include <functional>
#include <stdexcept>
#include <string>

namespace samout {

// Exit codes shared by all programs.
constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;    // an unexpected runtime failure (I/O error mid-run, peer died)
constexpr int kExitUsage = 2;      // bad flags, files or data: nothing was done
constexpr int kExitTempFail = 75;  // EX_TEMPFAIL: preempted, state saved, "resume me"

class UsageError : public std::runtime_error {
 public:
  explicit UsageError(const std::string& what) : std::runtime_error(what) {}
};

// Throws UsageError(message) when `cond` is false. For validating user input only.
inline void require(bool cond, const std::string& message) {
  if (!cond) throw UsageError(message);
}

// The first line of an exception's message: c10::Error appends a C++ backtrace after it.
std::string first_line(const std::string& message);

// Runs `body` and maps the std::exceptions escaping it to exit codes, printing first_line():
//   UsageError       -> "<program>: error: <message>" on stderr, exit 2 (kExitUsage);
//   any other        -> "<program>: fatal: <message>" on stderr, exit 1 (kExitFailure).
// A failed TORCH_CHECK is "any other": user input is validated with require() to get exit 2. In a
// multi-rank job every rank meets the same usage errors, so only rank 0 prints them (report_usage
// is false elsewhere); every rank prints its own "fatal" line.
int run_program(const char* program, const std::function<int()>& body, bool report_usage = true);

}  // namespace samout
