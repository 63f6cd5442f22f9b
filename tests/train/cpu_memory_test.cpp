// train/cpu_memory.h: after keep_freed_cpu_memory(), a large tensor freed and allocated again is
// served from memory the process already has: no page faults (glibc's default, mmap and unmap, faults
// in every page of it again).
#include "samout/train/cpu_memory.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <torch/torch.h>

namespace samout::train {
namespace {

long minor_faults() {
  struct rusage u {};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// Page faults while a fresh 64 MB tensor is filled (every page written).
long faults_filling_64mb() {
  const long before = minor_faults();
  auto t = torch::empty({(64 << 20) / 4}, torch::kFloat32);
  t.fill_(1.0f);
  return minor_faults() - before;
}

TEST(CpuMemory, FreedLargeTensorsAreReusedWithoutPageFaults) {
  const long pages = (64 << 20) / 4096;
  const long by_default = faults_filling_64mb();  // mmap'd, then unmapped when freed
  keep_freed_cpu_memory();
  faults_filling_64mb();  // the heap grows once
  const long kept = faults_filling_64mb();
  // By default the kernel maps fresh pages every time (fewer faults than pages only with
  // transparent huge pages set to "always"); kept, the second fill reuses the first's pages.
  if (by_default > pages / 2) EXPECT_LT(kept, by_default / 20) << by_default << " vs " << kept;
  EXPECT_LT(kept, pages / 20) << kept << " faults for " << pages << " pages";
}

}  // namespace
}  // namespace samout::train
