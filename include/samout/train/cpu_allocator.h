// A caching allocator for CPU tensors, installed as c10's CPU allocator by samout_ddp.
//
// Why: every training step allocates and frees the same large activations and gradients (at the
// seed's size the logits alone are 53 MB). glibc returns blocks above its mmap threshold (at most
// 32 MB) to the kernel on free and trims the heap above 64 MB, so each step page-faults and zeroes
// that memory again: ~0.07 s of kernel time per step at the seed's size, measured with
// GLIBC_TUNABLES forcing the heap instead. This allocator keeps freed large blocks in size classes
// and hands them back on the next request of the same class, like PyTorch's CUDA caching allocator.
// Large blocks are also advised as transparent huge pages (the kernel's THP mode is often
// "madvise"), which cuts the TLB misses of the matrix products' strided packing.
//
// Small requests (below kMinCachedBytes) go to the allocator that was installed before.
#pragma once

#include <c10/core/Allocator.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace samout::train {

struct CpuAllocatorStats {
  int64_t hits = 0;         // large requests served from the cache
  int64_t misses = 0;       // large requests that went to the system
  int64_t released = 0;     // freed blocks returned to the system because the cache was full
  size_t cached_bytes = 0;  // held in the cache, free
  size_t in_use_bytes = 0;  // handed out, not yet freed (large blocks only)
};

class CachingCpuAllocator final : public c10::Allocator {
 public:
  static constexpr size_t kMinCachedBytes = 256 << 10;
  static constexpr size_t kHugePage = 2 << 20;

  // cache_limit: the most free bytes kept; beyond it, freed blocks go back to the system.
  // fallback: serves small requests (c10's CPU allocator at install time).
  CachingCpuAllocator(size_t cache_limit, c10::Allocator* fallback);
  ~CachingCpuAllocator() override;

  c10::DataPtr allocate(size_t n) override;
  void copy_data(void* dest, const void* src, std::size_t count) const override;

  // The size class of an n-byte request: whole pages, whole huge pages from 2 MB on.
  static size_t size_class(size_t n);
  // Returns every cached block to the system.
  void empty_cache();
  CpuAllocatorStats stats() const;

 private:
  struct Block {
    CachingCpuAllocator* owner;
    void* ptr;
    size_t bytes;
  };
  static void free_block(void* ctx);
  void release(Block* b);

  const size_t cache_limit_;
  c10::Allocator* const fallback_;
  mutable std::mutex mu_;
  std::unordered_map<size_t, std::vector<Block*>> free_;  // size class -> free blocks
  CpuAllocatorStats stats_;
};

// Makes a process-wide CachingCpuAllocator the CPU allocator of every tensor allocated from now on
// (call it before building the model). Tensors allocated earlier keep their own deleters. The
// allocator lives until the process exits. cache_limit_mb = 0 leaves c10's allocator in place.
void install_caching_cpu_allocator(size_t cache_limit_mb);
// The installed allocator's counters; all zero when none is installed.
CpuAllocatorStats caching_cpu_allocator_stats();

}  // namespace samout::train
