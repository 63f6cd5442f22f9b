// Maps exceptions escaping a program's body to the exit-code contract of error.h.
#include "samout/common/error.h"

#include <cstdio>
#include <exception>

namespace samout {

namespace {
// Keeps only the first line: c10::Error appends a C++ backtrace after the message.
std::string first_line(const char* what) {
  std::string s(what ? what : "");
  const auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}
}  // namespace

int run_program(const char* program, const std::function<int()>& body, bool report_usage) {
  try {
    return body();
  } catch (const UsageError& e) {
    if (report_usage)
      std::fprintf(stderr, "%s: error: %s\n", program, first_line(e.what()).c_str());
    return kExitUsage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: fatal: %s\n", program, first_line(e.what()).c_str());
    return kExitFailure;
  }
}

}  // namespace samout
