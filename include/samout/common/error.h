// Errors that a user can cause (bad flags, bad files, bad data) and how programs report them.
//
// The contract, for every program in src/bin/: a user's mistake becomes a UsageError whose message
// names the offending value, `run_program` prints it as one line on stderr and the program exits
// with code 2, having written nothing. Bugs in our own code stay glog CHECKs (they abort loudly).
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

// Runs `body` and maps the exceptions escaping it to exit codes, printing only the first line of
// the message (c10::Error appends a backtrace) prefixed by `program`:
//   UsageError                -> "<program>: error: <message>" on stderr, exit 2 (kExitUsage);
//   any other std::exception  -> "<program>: fatal: <message>" on stderr, exit 1 (kExitFailure).
// A c10::Error (a failed TORCH_CHECK) is "any other": it exits 1, so a user's input must be
// validated with require(), not TORCH_CHECK, to get exit 2. Exceptions not derived from
// std::exception are not caught. In a multi-rank job every rank meets the same flag errors; only
// rank 0 reports a UsageError (report_usage = false elsewhere), so the user sees one line; "fatal"
// lines are printed by every rank that meets one.
int run_program(const char* program, const std::function<int()>& body, bool report_usage = true);

}  // namespace samout
