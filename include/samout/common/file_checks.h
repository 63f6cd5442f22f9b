// Checks of the files a user names, made before any work, so that a bad path costs an exit code 2
// at start-up rather than a failure (and a half-written file) after hours of training.
#pragma once

#include <cstdint>
#include <string>

namespace samout {

// `path` (given as --`flag`) can take a new file of about `bytes` bytes: it is not a directory (nor
// ends in '/'), its folder exists (unless !folder_must_exist: a caller that creates it), and that
// filesystem has the space. Throws UsageError naming the flag otherwise. Writes nothing.
void check_output_file(const std::string& flag, const std::string& path, int64_t bytes,
                       bool folder_must_exist = true);

// `path` (given as --`flag`) is a regular file (not a directory, device, FIFO or socket) of 1 to
// `max_bytes` bytes, checked by its type and size before a byte of it is read. Throws UsageError.
void check_input_file(const std::string& flag, const std::string& path, int64_t max_bytes);

}  // namespace samout
