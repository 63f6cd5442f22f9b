// Maps exceptions escaping a program's body to the exit-code contract of error.h.
#include "samout/common/error.h"

#include <cstdio>
#include <exception>

namespace samout {

std::string first_line(const std::string& message) { return message.substr(0, message.find('\n')); }

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
