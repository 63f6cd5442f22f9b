// One job per checkpoint folder: rank 0 holds an exclusive flock(2) on <ckpt_dir>/.lock for the
// whole run. A second job pointed at the same folder would otherwise resume the first one's
// checkpoint and then trip over its temporary folders; instead it stops at start-up, naming the
// holder (host and pid, written into the lock file). The kernel drops the lock when the process
// dies, however it dies, so a crashed job never leaves the folder locked.
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
