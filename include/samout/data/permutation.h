// A keyed bijection of [0, n): the loader's shuffle, in O(1) memory whatever n is.
//
// A stored permutation of a 1e11-token corpus's ~1e8 windows would be 800 MB per rank. A Feistel
// network over the smallest power of 4 >= n is a bijection of [0, 4^h) for any key; cycle-walking
// (re-applying it until the value is below n) restricts it to [0, n), in < 4 expected rounds.
#pragma once

#include <cstdint>

namespace samout::data {

// splitmix64's finaliser: the source of every key and random token in the data library (so
// results never depend on the platform's std:: distributions).
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

class FeistelPermutation {
 public:
  // A bijection of [0, n) chosen by `key`; n >= 1.
  FeistelPermutation(uint64_t n, uint64_t key);
  // The image of i, for i in [0, n).
  uint64_t operator()(uint64_t i) const;

 private:
  static constexpr int kRounds = 6;  // 4 suffice for a pseudorandom permutation; 6 for margin
  uint64_t encrypt(uint64_t x) const;

  uint64_t n_;
  int half_bits_;  // each Feistel half holds this many bits; the domain is 2^(2*half_bits_)
  uint64_t half_mask_;
  uint64_t round_keys_[kRounds];
};

}  // namespace samout::data
