// Durable file writes for weights and checkpoints: a reader sees a whole file or none.
// Files are written under a temporary name, fsynced, then renamed into place.
#pragma once

#include <string>
#include <string_view>

namespace samout::ckpt {

// fsync of a file or a folder (a folder's fsync makes the renames inside it durable).
void fsync_path(const std::string& path);

// Writes `bytes` to path + ".part", fsyncs it and renames it to `path`; on failure the .part is
// removed.
void write_file_atomic(const std::string& path, std::string_view bytes);

// For files written by a library under the temporary name `tmp`: fsyncs it, renames it to `path`.
void publish_file(const std::string& tmp, const std::string& path);

}  // namespace samout::ckpt
