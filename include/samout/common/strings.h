// Helpers shared by every program: the comma-separated list form of a flag, and durations, both
// measured (steady clock) and as people read them in logs and progress lines.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace samout {

// "a,b" -> {"a", "b"}; "a,,b" -> {"a", "", "b"} (empty entries kept: callers refuse or skip them);
// "a," -> {"a"} (a trailing separator ends the list, as in gflags); "" -> {}.
std::vector<std::string> split_list(const std::string& list, char sep = ',');

// "12.3s", "3m05s", "1h02m"; "?" for a negative or non-finite number of seconds.
std::string format_duration(double seconds);

// Seconds elapsed on the steady clock since t.
double seconds_since(std::chrono::steady_clock::time_point t);

}  // namespace samout
