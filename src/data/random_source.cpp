// Synthetic uniform-random windows for disk-free benchmarks (see window_source.h).
#include "samout/common/error.h"
#include "samout/data/permutation.h"
#include "samout/data/window_source.h"

namespace samout::data {

namespace {
class RandomSource final : public WindowSource {
 public:
  RandomSource(uint64_t seed, int64_t seq_len, int64_t vocab_size)
      : seed_(seed), seq_len_(seq_len) {
    meta_.vocab_size = vocab_size;  // no special ids: pad/bos/eos/unk stay -1
    meta_.tokenizer_kind = "random";
  }
  int64_t num_windows() const override { return int64_t{1} << 32; }
  const CorpusMeta& meta() const override { return meta_; }

  void read(int64_t w, int32_t* out) override {
    const uint64_t base = mix64(seed_ ^ mix64(static_cast<uint64_t>(w)));
    const uint64_t v = static_cast<uint64_t>(meta_.vocab_size);
    // Lemire's multiply-shift maps a uniform 32-bit value to [0, v) without a division.
    for (int64_t j = 0; j <= seq_len_; ++j)
      out[j] = static_cast<int32_t>(((mix64(base + j) & 0xffffffffULL) * v) >> 32);
  }

 private:
  uint64_t seed_;
  int64_t seq_len_;
  CorpusMeta meta_;
};
}  // namespace

std::unique_ptr<WindowSource> open_random(uint64_t seed, int64_t seq_len, int64_t vocab_size) {
  require(vocab_size > 0 && vocab_size <= (int64_t{1} << 31),
          "random:" + std::to_string(seed) + ": needs vocab_size in [1, 2^31], got " +
              std::to_string(vocab_size));
  return std::make_unique<RandomSource>(seed, seq_len, vocab_size);
}

}  // namespace samout::data
