// See file_checks.h.
#include "samout/common/file_checks.h"

#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "samout/common/error.h"

namespace samout {

namespace {

std::string megabytes(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f MB", bytes / 1e6);
  return buf;
}

}  // namespace

void check_output_file(const std::string& flag, const std::string& path, int64_t bytes,
                       bool folder_must_exist) {
  const std::string what = "--" + flag + "=" + path;
  require(!path.empty(), "--" + flag + " is empty");
  namespace fs = std::filesystem;
  std::error_code ec;
  require(path.back() != '/' && !fs::is_directory(path, ec),
          what + ": is a directory; give the name of a file to write");
  fs::path parent =
      fs::path(path).parent_path().empty() ? fs::path(".") : fs::path(path).parent_path();
  require(!folder_must_exist || fs::is_directory(parent, ec),
          what + ": no such folder " + parent.string());
  // The folder the file will be in, or, when the caller will create it, its nearest existing one.
  while (!fs::is_directory(parent, ec) && parent.has_parent_path() &&
         parent != parent.parent_path())
    parent = parent.parent_path();
  struct statvfs vfs {};
  if (::statvfs(parent.c_str(), &vfs) != 0)
    return;  // no figure to check against: let the write tell
  // Root may use the blocks reserved for it; anyone else only the available ones.
  const double free_bytes =
      static_cast<double>(::geteuid() == 0 ? vfs.f_bfree : vfs.f_bavail) * vfs.f_frsize;
  require(free_bytes >= static_cast<double>(bytes),
          what + ": needs about " + megabytes(static_cast<double>(bytes)) + " but only " +
              megabytes(free_bytes) + " are free on its filesystem");
}

void check_input_file(const std::string& flag, const std::string& path, int64_t max_bytes) {
  const std::string what = "--" + flag + "=" + path;
  struct stat st {};
  require(::stat(path.c_str(), &st) == 0, what + ": " + std::strerror(errno));
  require(!S_ISDIR(st.st_mode), what + ": is a directory, not a weights file");
  require(S_ISREG(st.st_mode),
          what + ": not a regular file (a device, FIFO or socket), not a weights file");
  require(st.st_size > 0, what + ": is empty");
  require(st.st_size <= max_bytes, what + ": " + std::to_string(st.st_size) +
                                       " bytes, more than a weights file of this model can be (" +
                                       std::to_string(max_bytes) + ")");
}

}  // namespace samout
