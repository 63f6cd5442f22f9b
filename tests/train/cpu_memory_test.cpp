// train/cpu_memory.h: after keep_freed_cpu_memory(), a large tensor comes from the heap (not its
// own mmap), and once freed it stays with the process and serves the next one. glibc's own
// statistics (mallinfo2) say where each block came from; page-fault counts would say the same on
// a plain kernel but are counted differently under some sandboxes, so they are not asserted.
#include "samout/train/cpu_memory.h"

#include <gtest/gtest.h>
#include <malloc.h>
#include <torch/torch.h>

namespace samout::train {
namespace {

constexpr int64_t kBytes = 64 << 20;  // above glibc's largest dynamic mmap threshold (32 MB)

torch::Tensor big_tensor() { return torch::empty({kBytes / 4}, torch::kFloat32); }

TEST(CpuMemory, LargeTensorsComeFromTheHeapAndAreReusedWhenFreed) {
  {  // glibc's default: the block is mmap'd on its own and unmapped when freed
    const size_t mapped_before = mallinfo2().hblkhd;
    auto t = big_tensor();
    EXPECT_GE(mallinfo2().hblkhd - mapped_before, static_cast<size_t>(kBytes));
  }
  keep_freed_cpu_memory();
  const size_t mapped_before = mallinfo2().hblkhd;
  void* first = nullptr;
  size_t heap_in_use = 0;
  {
    auto t = big_tensor();
    EXPECT_EQ(mallinfo2().hblkhd, mapped_before) << "a large block was still mmap'd";
    first = t.data_ptr();
    heap_in_use = mallinfo2().arena;
    EXPECT_GE(heap_in_use, static_cast<size_t>(kBytes));
  }
  EXPECT_EQ(mallinfo2().arena, heap_in_use) << "the heap was trimmed when the block was freed";
  auto again = big_tensor();
  EXPECT_EQ(again.data_ptr(), first) << "the freed block did not serve the next tensor";
  EXPECT_EQ(mallinfo2().arena, heap_in_use) << "the heap grew again for a block it already had";
}

}  // namespace
}  // namespace samout::train
