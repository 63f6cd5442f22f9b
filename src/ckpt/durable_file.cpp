#include "samout/ckpt/durable_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <stdexcept>

namespace samout::ckpt {

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error("cannot open " + path + " to fsync");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw std::runtime_error("fsync failed on " + path);
}

void publish_file(const std::string& tmp, const std::string& path) {
  fsync_path(tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw std::runtime_error("cannot rename " + tmp + " to " + path);
}

void write_file_atomic(const std::string& path, std::initializer_list<std::string_view> parts) {
  const std::string part = path + ".part";
  std::FILE* f = std::fopen(part.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot create " + part);
  try {
    bool ok = true;
    for (std::string_view b : parts) ok = ok && std::fwrite(b.data(), 1, b.size(), f) == b.size();
    ok = ok && std::fflush(f) == 0;
    if (std::fclose(f) != 0 || !ok) throw std::runtime_error("cannot write " + part);
    publish_file(part, path);
  } catch (...) {
    std::remove(part.c_str());  // a full disk leaves no half-written file behind
    throw;
  }
}

}  // namespace samout::ckpt
