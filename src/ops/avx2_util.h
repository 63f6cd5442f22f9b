// AVX2 helpers shared by the ops' vector kernels (private to src/ops). Callers are compiled for
// AVX2 themselves (target attribute) and run only where samout::cpu_has_avx2_fma() holds.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

namespace samout::ops {

// The sum of a vector's 8 lanes.
__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace samout::ops
#endif
