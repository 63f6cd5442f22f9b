#include "samout/common/strings.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace samout {

std::vector<std::string> split_list(const std::string& list, char sep) {
  std::vector<std::string> out;
  for (size_t pos = 0; pos < list.size();) {
    const size_t end = std::min(list.find(sep, pos), list.size());
    out.push_back(list.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int whole = static_cast<int>(s);
  char buf[32];
  if (s < 60) {
    std::snprintf(buf, sizeof(buf), "%.1fs", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof(buf), "%dm%02ds", whole / 60, whole % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%dh%02dm", whole / 3600, whole % 3600 / 60);
  }
  return buf;
}

}  // namespace samout
