// Durable file writes for weights and checkpoints: written under a temporary name, fsynced, then
// renamed into place, so a reader sees a whole file or none.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

namespace samout::ckpt {

// fsync of a file or a folder (a folder's fsync makes the renames inside it durable).
void fsync_path(const std::string& path);

// Writes `parts`, one after the other, to path + ".part", fsyncs it and renames it to `path`; on
// failure the .part is removed.
void write_file_atomic(const std::string& path, std::initializer_list<std::string_view> parts);

// For files written by a library under the temporary name `tmp`: fsyncs it, renames it to `path`.
void publish_file(const std::string& tmp, const std::string& path);

}  // namespace samout::ckpt
