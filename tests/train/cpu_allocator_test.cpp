// The caching CPU allocator (train/cpu_allocator.h): reuse, size classes, the cache limit, alignment,
// the fallback for small requests, and tensors allocated through c10 once it is installed.
#include "samout/train/cpu_allocator.h"

#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstring>

namespace samout::train {
namespace {

constexpr size_t kMB = 1 << 20;

TEST(CachingCpuAllocator, FreedBlockIsReusedForTheSameClass) {
  CachingCpuAllocator a(64 * kMB, c10::GetDefaultCPUAllocator());
  void* first = nullptr;
  {
    auto p = a.allocate(3 * kMB);
    first = p.get();
    std::memset(first, 1, 3 * kMB);  // the memory is really there
    EXPECT_EQ(a.stats().in_use_bytes, CachingCpuAllocator::size_class(3 * kMB));
  }
  EXPECT_EQ(a.stats().cached_bytes, CachingCpuAllocator::size_class(3 * kMB));
  auto q = a.allocate(3 * kMB + 100);  // same 2 MB class (4 MB)
  EXPECT_EQ(q.get(), first);
  auto r = a.allocate(1 * kMB);  // another class: a new block
  EXPECT_NE(r.get(), first);
  const auto s = a.stats();
  EXPECT_EQ(s.hits, 1);
  EXPECT_EQ(s.misses, 2);
  EXPECT_EQ(s.cached_bytes, 0u);
}

TEST(CachingCpuAllocator, SizeClassesAndAlignment) {
  EXPECT_EQ(CachingCpuAllocator::size_class(300 * 1024), 300u * 1024);
  EXPECT_EQ(CachingCpuAllocator::size_class(300 * 1024 + 1), 300u * 1024 + 4096);
  EXPECT_EQ(CachingCpuAllocator::size_class(2 * kMB), 2 * kMB);
  EXPECT_EQ(CachingCpuAllocator::size_class(2 * kMB + 1), 4 * kMB);
  CachingCpuAllocator a(64 * kMB, c10::GetDefaultCPUAllocator());
  auto small_block = a.allocate(300 * 1024);
  auto huge = a.allocate(5 * kMB);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small_block.get()) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(huge.get()) % (2 * kMB), 0u);
}

TEST(CachingCpuAllocator, SmallRequestsGoToTheFallback) {
  CachingCpuAllocator a(64 * kMB, c10::GetDefaultCPUAllocator());
  {
    auto p = a.allocate(1000);
    ASSERT_NE(p.get(), nullptr);
    std::memset(p.get(), 0, 1000);
  }
  const auto s = a.stats();
  EXPECT_EQ(s.hits + s.misses, 0);
  EXPECT_EQ(s.cached_bytes, 0u);
}

TEST(CachingCpuAllocator, CacheLimitReleasesTheExcess) {
  CachingCpuAllocator a(5 * kMB, c10::GetDefaultCPUAllocator());
  {
    auto p = a.allocate(4 * kMB);
    auto q = a.allocate(4 * kMB);
  }  // both freed: only one fits under 5 MB
  auto s = a.stats();
  EXPECT_EQ(s.cached_bytes, 4 * kMB);
  EXPECT_EQ(s.released, 1);
  a.empty_cache();
  EXPECT_EQ(a.stats().cached_bytes, 0u);
  // Nothing cached any more: the next request is a miss.
  auto r = a.allocate(4 * kMB);
  EXPECT_EQ(a.stats().misses, 3);
}

// Installed as c10's CPU allocator, it serves torch::empty, and a step-like pattern of frees and
// allocations of the same sizes is served from the cache.
TEST(CachingCpuAllocator, InstalledServesTensors) {
  install_caching_cpu_allocator(256);
  install_caching_cpu_allocator(512);  // a second call keeps the first
  const auto before = caching_cpu_allocator_stats();
  for (int step = 0; step < 3; ++step) {
    auto x = torch::randn({1024, 1024});  // 4 MB
    auto y = torch::mm(x, x);
    EXPECT_TRUE(torch::allclose(y, torch::mm(x.clone(), x.clone())));
  }
  const auto after = caching_cpu_allocator_stats();
  EXPECT_GT(after.hits, before.hits);
  EXPECT_LE(after.cached_bytes, 256 * kMB);
}

}  // namespace
}  // namespace samout::train
