// One job per checkpoint folder: rank 0 holds an exclusive flock(2) on <ckpt_dir>/.lock for the
// whole run, so a second job (which would resume the first one's checkpoint and trip over its
// temporary folders) stops at start-up, naming the holder's host and pid. The kernel drops the lock
// however the process dies, so a crashed job never leaves the folder locked.
#pragma once

#include <string>

namespace samout::ckpt {

class DirLock {
 public:
  // Creates the lock file if needed and takes the lock. Throws UsageError when the folder is not
  // writable (a read-only filesystem, say) or another process holds the lock.
  explicit DirLock(const std::string& dir);
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace samout::ckpt
