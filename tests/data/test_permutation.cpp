// The loader's shuffle: a keyed bijection of [0, n) for any n, in O(1) memory.
#include <gtest/gtest.h>

#include <vector>

#include "samout/data/permutation.h"

namespace samout::data {
namespace {

TEST(FeistelPermutation, IsABijectionForAwkwardSizes) {
  for (uint64_t n : {1ull, 2ull, 3ull, 5ull, 16ull, 17ull, 1000ull, 4099ull, 65536ull}) {
    for (uint64_t key : {0ull, 1ull, 0xdeadbeefull}) {
      FeistelPermutation p(n, key);
      std::vector<int> seen(n, 0);
      for (uint64_t i = 0; i < n; ++i) {
        const uint64_t y = p(i);
        ASSERT_LT(y, n) << "n=" << n;
        ++seen[y];
      }
      for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(seen[i], 1) << "n=" << n << " key=" << key;
    }
  }
}

TEST(FeistelPermutation, KeysGiveDifferentOrdersThatShuffle) {
  const uint64_t n = 1000;
  FeistelPermutation a(n, 1), b(n, 2);
  int same = 0, fixed = 0, ascending = 0;
  for (uint64_t i = 0; i < n; ++i) {
    same += a(i) == b(i);
    fixed += a(i) == i;
    if (i > 0) ascending += a(i) > a(i - 1);
  }
  EXPECT_LT(same, 20);  // ~1 expected for independent permutations
  EXPECT_LT(fixed, 20);
  EXPECT_GT(ascending, 350);  // ~500 for a random order; an identity would give 999
  EXPECT_LT(ascending, 650);
}

TEST(FeistelPermutation, HugeDomainsNeedNoTable) {
  // 1e11 tokens / 1024 per window ~ 1e8 windows; 2^40 windows exercises 20-bit halves.
  const uint64_t n = (uint64_t{1} << 40) + 12345;
  FeistelPermutation p(n, 7);
  for (uint64_t i : {uint64_t{0}, uint64_t{1}, n / 2, n - 1}) {
    const uint64_t y = p(i);
    EXPECT_LT(y, n);
    EXPECT_EQ(y, FeistelPermutation(n, 7)(i));  // a pure function of (n, key, i)
  }
}

}  // namespace
}  // namespace samout::data
