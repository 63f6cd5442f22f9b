// Run-time CPU feature checks for the hand-vectorised kernels, which are compiled with
// __attribute__((target(...))) and chosen when the running CPU has the instructions.
#pragma once

namespace samout {

// True when the CPU executes AVX2 and FMA. Safe to call from static initialisers: it initialises
// libgcc's CPU model itself rather than relying on libgcc's constructor having run first.
inline bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

}  // namespace samout
