#include "samout/train/cpu_memory.h"

#include <malloc.h>

#include <climits>

namespace samout::train {

void keep_freed_cpu_memory() {
  mallopt(M_MMAP_MAX, 0);  // no mmap'd chunks: every block comes from (and returns to) a heap
  mallopt(M_TRIM_THRESHOLD, INT_MAX);
}

}  // namespace samout::train
