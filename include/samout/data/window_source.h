// Where the loader's training windows come from: an HDF5 corpus or a synthetic random stream.
//
// A window is T+1 consecutive tokens (T inputs, T shifted targets). Windows are numbered
// 0..num_windows()-1 and a window's content depends only on its number, never on who reads it,
// which is what makes the loader's order independent of the world size.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "samout/data/corpus_file.h"

namespace samout::data {

class WindowSource {
 public:
  virtual ~WindowSource() = default;
  virtual int64_t num_windows() const = 0;
  // Writes window w's T+1 tokens to out. Not thread-safe: one caller at a time.
  virtual void read(int64_t w, int32_t* out) = 0;
  // vocab and special ids; tokenizer_model is "" for synthetic sources.
  virtual const CorpusMeta& meta() const = 0;
};

// Windows of an HDF5 corpus: the sorted shards matching `glob`, windows laid out with stride T
// inside each shard (window i of a shard is tokens [i*T, i*T + T]; the < T tokens left at a
// shard's end are unused). Validates every shard (see corpus_file.h) and that all shards share
// vocab and tokenizer; shards holding <= verify_tokens_max tokens in all are also scanned in full
// for ids >= vocab, larger ones are checked window by window as they are read.
std::unique_ptr<WindowSource> open_corpus(const std::string& glob, int64_t seq_len,
                                          int64_t vocab_size, int64_t verify_tokens_max);

// "random:SEED": uniform random ids in [0, vocab_size); token j of window w is a pure function
// of (SEED, w, j). Offers 2^32 windows per epoch, reads nothing from disk.
std::unique_ptr<WindowSource> open_random(uint64_t seed, int64_t seq_len, int64_t vocab_size);

}  // namespace samout::data
