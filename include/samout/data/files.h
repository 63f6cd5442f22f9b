// Expanding the file arguments of the data tools: each argument is a path or a shell glob.
#pragma once

#include <string>
#include <vector>

namespace samout::data {

// Expands one glob (or plain path) into the sorted list of existing regular files it names.
// Throws UsageError naming the pattern when nothing matches: a silent empty corpus is a bug. A
// plain path naming a directory (or a device, a FIFO) is reported as that.
std::vector<std::string> expand_glob(const std::string& pattern);

// Expands every pattern in order, concatenating the results (each pattern's matches sorted).
std::vector<std::string> expand_globs(const std::vector<std::string>& patterns);

}  // namespace samout::data
