#include "samout/train/cpu_allocator.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

namespace samout::train {

namespace {
size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }
}  // namespace

CachingCpuAllocator::CachingCpuAllocator(size_t cache_limit, c10::Allocator* fallback)
    : cache_limit_(cache_limit), fallback_(fallback) {
  TORCH_CHECK(fallback_ != nullptr && fallback_ != this, "CachingCpuAllocator needs a fallback");
}

CachingCpuAllocator::~CachingCpuAllocator() { empty_cache(); }

size_t CachingCpuAllocator::size_class(size_t n) {
  return n >= kHugePage ? round_up(n, kHugePage) : round_up(n, 4096);
}

c10::DataPtr CachingCpuAllocator::allocate(size_t n) {
  if (n < kMinCachedBytes) return fallback_->allocate(n);
  const size_t bytes = size_class(n);
  Block* b = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(bytes);
    if (it != free_.end() && !it->second.empty()) {
      b = it->second.back();
      it->second.pop_back();
      stats_.cached_bytes -= bytes;
      ++stats_.hits;
    } else {
      ++stats_.misses;
    }
    stats_.in_use_bytes += bytes;
  }
  if (b == nullptr) {
    const size_t align = bytes >= kHugePage ? kHugePage : 64;
    void* p = std::aligned_alloc(align, bytes);
    if (p == nullptr) {  // the cache may hold what the system is missing: give it back, try again
      empty_cache();
      p = std::aligned_alloc(align, bytes);
    }
    if (p == nullptr) {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.in_use_bytes -= bytes;
    }
    TORCH_CHECK_WITH(OutOfMemoryError, p != nullptr, "CPU out of memory allocating ", bytes,
                     " bytes");
    // Advice only: with THP off, or on a kernel without it, this fails harmlessly.
    if (align == kHugePage) (void)madvise(p, bytes, MADV_HUGEPAGE);
    b = new Block{this, p, bytes};
  }
  return {b->ptr, b, &CachingCpuAllocator::free_block, c10::Device(c10::DeviceType::CPU)};
}

void CachingCpuAllocator::free_block(void* ctx) {
  auto* b = static_cast<Block*>(ctx);
  b->owner->release(b);
}

void CachingCpuAllocator::release(Block* b) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.in_use_bytes -= b->bytes;
    if (stats_.cached_bytes + b->bytes <= cache_limit_) {
      stats_.cached_bytes += b->bytes;
      free_[b->bytes].push_back(b);
      return;
    }
    ++stats_.released;
  }
  std::free(b->ptr);
  delete b;
}

void CachingCpuAllocator::empty_cache() {
  std::vector<Block*> blocks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [bytes, list] : free_) blocks.insert(blocks.end(), list.begin(), list.end());
    free_.clear();
    stats_.cached_bytes = 0;
  }
  for (Block* b : blocks) {
    std::free(b->ptr);
    delete b;
  }
}

CpuAllocatorStats CachingCpuAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void CachingCpuAllocator::copy_data(void* dest, const void* src, std::size_t count) const {
  std::memcpy(dest, src, count);
}

namespace {
CachingCpuAllocator* g_installed = nullptr;
std::mutex g_install_mu;
}  // namespace

void install_caching_cpu_allocator(size_t cache_limit_mb) {
  if (cache_limit_mb == 0) return;
  std::lock_guard<std::mutex> lock(g_install_mu);
  if (g_installed != nullptr) return;
  // Never destroyed: tensors freed during static destruction still call its deleter.
  g_installed = new CachingCpuAllocator(cache_limit_mb << 20, c10::GetCPUAllocator());
  // The highest priority, so that nothing later replaces it under the tensors it owns.
  c10::SetCPUAllocator(g_installed, /*priority=*/UINT8_MAX);
}

CpuAllocatorStats caching_cpu_allocator_stats() {
  std::lock_guard<std::mutex> lock(g_install_mu);
  return g_installed ? g_installed->stats() : CpuAllocatorStats{};
}

}  // namespace samout::train
