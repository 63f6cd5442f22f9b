#include "samout/ckpt/dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "samout/common/error.h"

namespace samout::ckpt {

DirLock::DirLock(const std::string& dir) {
  const std::string path = dir + "/.lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0)
    throw UsageError("--ckpt_dir=" + dir + " is not writable: cannot create " + path + " (" +
                     std::strerror(errno) + ")");
  auto fail = [&](const std::string& why) {
    ::close(fd_);
    fd_ = -1;
    throw UsageError("--ckpt_dir=" + dir + why);
  };
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char holder[256] = {0};
    const ssize_t n = ::pread(fd_, holder, sizeof(holder) - 1, 0);
    std::string who = n > 0 ? std::string(holder, static_cast<size_t>(n)) : std::string("unknown");
    who.erase(who.find_last_not_of("\n ") + 1);
    fail(" is in use by another job (" +
         (err == EWOULDBLOCK ? "held by " + who : std::string(std::strerror(err))) +
         "); give this run its own --ckpt_dir");
  }
  char host[128] = {0};
  ::gethostname(host, sizeof(host) - 1);
  const std::string me = std::string("host ") + host + ", pid " + std::to_string(::getpid()) + "\n";
  // Who holds it, for the message above; also proves the folder takes writes (a read-only mount
  // lets the open of an existing file succeed).
  if (::ftruncate(fd_, 0) != 0 ||
      ::pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size()))
    fail(std::string(" is not writable (") + std::strerror(errno) + ")");
}

DirLock::~DirLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock
}

}  // namespace samout::ckpt
