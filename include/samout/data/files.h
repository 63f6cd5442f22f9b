// Expanding the file arguments of the data tools: each argument is a path or a shell glob.
#pragma once

#include <string>
#include <vector>

namespace samout::data {

// Expands one glob (or plain path) into the sorted list of existing regular files it names.
// Throws UsageError naming the pattern when nothing matches (a silent empty corpus is a bug), and
// says so when a plain path names a directory, suggesting the glob `<dir>/<example>`.
std::vector<std::string> expand_glob(const std::string& pattern, const std::string& example = "*");

}  // namespace samout::data
