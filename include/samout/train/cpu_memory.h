// CPU training memory: glibc serves blocks above its mmap threshold (the seed's logits alone are
// 53 MB) with mmap, unmaps them on free and trims the heap, so every step faults and zeroes that
// memory again: ~5% of a step at the seed setting (bench/RESULTS.md, issue 14 item 5). Two mallopt
// calls keep it, as well as a caching allocator of ours did (within 1.3%).
#pragma once

#include <malloc.h>

#include <climits>

namespace samout::train {

// Large blocks from the heap instead of mmap, and the heap never trimmed: freed memory stays with
// the process for the next step. Called once at start-up of a CPU run.
inline void keep_freed_cpu_memory() {
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, INT_MAX);
}

}  // namespace samout::train
