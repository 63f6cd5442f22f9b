// Glob expansion for the data tools (see files.h).
#include "samout/data/files.h"

#include <glob.h>

#include <algorithm>
#include <filesystem>

#include "samout/common/error.h"

namespace samout::data {

namespace fs = std::filesystem;

std::vector<std::string> expand_glob(const std::string& pattern, const std::string& example) {
  std::vector<std::string> out;
  std::error_code ec;
  glob_t g{};
  // GLOB_NOCHECK is not used: a pattern that matches nothing must be reported, not passed on.
  if (::glob(pattern.c_str(), GLOB_TILDE, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i)
      if (fs::is_regular_file(g.gl_pathv[i], ec)) out.emplace_back(g.gl_pathv[i]);
  }
  globfree(&g);
  const bool is_glob = pattern.find_first_of("*?[") != std::string::npos;
  if (out.empty() && !is_glob) {
    const fs::file_status st = fs::status(pattern, ec);
    require(!fs::is_directory(st),
            pattern + ": is a directory, not a file (give a glob of its files, such as " + pattern +
                (pattern.back() == '/' ? "" : "/") + example + ")");
    require(!fs::exists(st), pattern + ": not a regular file");
  }
  require(!out.empty(), pattern + (is_glob ? ": glob matches no file" : ": no such file"));
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace samout::data
