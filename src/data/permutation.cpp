// Feistel permutation with cycle-walking (see permutation.h).
#include "samout/data/permutation.h"

#include <glog/logging.h>

namespace samout::data {

FeistelPermutation::FeistelPermutation(uint64_t n, uint64_t key) : n_(n) {
  CHECK_GE(n, 1u);
  int bits = 0;
  while (bits < 64 && (uint64_t{1} << bits) < n) ++bits;
  half_bits_ = bits < 2 ? 1 : (bits + 1) / 2;  // at least 1 bit per half, so the domain is >= 4
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
  uint64_t k = mix64(key);
  for (auto& rk : round_keys_) rk = k = mix64(k ^ 0x5851f42d4c957f2dULL);
}

uint64_t FeistelPermutation::encrypt(uint64_t x) const {
  uint64_t left = x >> half_bits_, right = x & half_mask_;
  for (uint64_t rk : round_keys_) {
    const uint64_t f = mix64(right ^ rk) & half_mask_;
    const uint64_t next_right = left ^ f;
    left = right;
    right = next_right;
  }
  return (left << half_bits_) | right;
}

uint64_t FeistelPermutation::operator()(uint64_t i) const {
  CHECK_LT(i, n_);
  // Cycle-walking: encrypt is a bijection of the power-of-4 domain, so following its cycle from
  // i (< n) must come back below n; the first such value defines a bijection of [0, n).
  uint64_t x = encrypt(i);
  while (x >= n_) x = encrypt(x);
  return x;
}

}  // namespace samout::data
