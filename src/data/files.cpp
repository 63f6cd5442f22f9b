// Glob expansion for the data tools (see files.h).
#include "samout/data/files.h"

#include <glob.h>
#include <sys/stat.h>

#include <algorithm>

#include "samout/common/error.h"

namespace samout::data {

std::vector<std::string> expand_glob(const std::string& pattern) {
  std::vector<std::string> out;
  glob_t g{};
  // GLOB_NOCHECK is not used: a pattern that matches nothing must be reported, not passed on.
  const int rc = ::glob(pattern.c_str(), GLOB_TILDE, nullptr, &g);
  if (rc == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) {
      struct stat st {};
      if (::stat(g.gl_pathv[i], &st) == 0 && S_ISREG(st.st_mode)) out.emplace_back(g.gl_pathv[i]);
    }
  }
  globfree(&g);
  const bool is_glob = pattern.find_first_of("*?[") != std::string::npos;
  if (out.empty()) {
    struct stat st {};
    require(is_glob || ::stat(pattern.c_str(), &st) != 0 || !S_ISDIR(st.st_mode),
            pattern + ": is a directory, not a file (give a glob of its files, such as " + pattern +
                (pattern.back() == '/' ? "" : "/") + "*)");
    require(is_glob || ::stat(pattern.c_str(), &st) != 0, pattern + ": not a regular file");
    require(false, pattern + (is_glob ? ": glob matches no file" : ": no such file"));
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> expand_globs(const std::vector<std::string>& patterns) {
  std::vector<std::string> out;
  for (const auto& p : patterns) {
    auto files = expand_glob(p);
    out.insert(out.end(), files.begin(), files.end());
  }
  return out;
}

}  // namespace samout::data
