// train/cpu_memory.h: after keep_freed_cpu_memory(), a large tensor comes from the heap (not its
// own mmap), and once freed it stays with the process and serves the next ones. glibc's own
// statistics (mallinfo2) say where each block came from; page-fault counts would say the same on
// a plain kernel but are counted differently under some sandboxes, so they are not asserted.
#include "samout/train/cpu_memory.h"

#include <gtest/gtest.h>
#include <malloc.h>
#include <torch/torch.h>

#include <algorithm>
#include <vector>

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
  // glibc reaches a steady state after a few rounds (a freed block merges back only once the small
  // bookkeeping allocated after it is free too); from then on every round reuses a block it had.
  constexpr int kRounds = 12;
  std::vector<void*> where;
  std::vector<size_t> heap;
  for (int round = 0; round < kRounds; ++round) {
    auto t = big_tensor();
    EXPECT_EQ(mallinfo2().hblkhd, mapped_before) << "a large block was mmap'd in round " << round;
    where.push_back(t.data_ptr());
    heap.push_back(mallinfo2().arena);
    t = torch::Tensor();
    EXPECT_EQ(mallinfo2().arena, heap.back()) << "the heap was trimmed in round " << round;
  }
  for (int round = kRounds - 3; round < kRounds; ++round) {
    EXPECT_NE(std::find(where.begin(), where.begin() + round, where[round]), where.begin() + round)
        << "round " << round << " took a block no earlier round had";
    EXPECT_EQ(heap[round], heap[kRounds - 4]) << "the heap still grew in round " << round;
  }
}

}  // namespace
}  // namespace samout::train
