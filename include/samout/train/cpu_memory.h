// CPU training memory: large tensors freed by one step are asked for again by the next. By default
// glibc serves blocks above its mmap threshold (at most 32 MB; the seed's logits alone are 53 MB)
// with mmap and unmaps them on free, and trims the heap's top, so every step page-faults and zeroes
// that memory again. Measured at the seed setting (bench/RESULTS.md, issue 14 item 5), keeping it is
// ~5% of a step, and glibc's own settings do it as well as a caching allocator of ours did (within
// 1.3%), so this is two mallopt calls.
#pragma once

namespace samout::train {

// Large blocks from the heap instead of mmap, and the heap never trimmed: freed memory stays with
// the process for the next step. Called once at start-up of a CPU run.
void keep_freed_cpu_memory();

}  // namespace samout::train
