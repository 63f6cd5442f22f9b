// The training data loader: shuffled windows of T+1 tokens, sharded over ranks, read ahead.
//
// Order. Epoch e shuffles the M windows with a keyed bijection P_e of [0, M) (permutation.h), in
// O(1) memory. Global step k of epoch e is the G windows P_e(k*G) .. P_e(k*G + G-1), of which rank
// r of W takes rows [r*G/W, (r+1)*G/W). An epoch has floor(M/G) steps (the M mod G windows left
// over differ by epoch). So global batches are identical at every W, and the cursor (epoch, step)
// is the loader's whole resume state.
//
// Prefetch. A background thread reads up to `prefetch` batches ahead; an error met there (e.g. a
// corrupt token) is rethrown by the next() that would have returned that batch.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace samout::data {

struct LoaderConfig {
  std::string spec;          // glob of HDF5 shards, or "random:SEED"
  int64_t seq_len = 0;       // T; windows hold T+1 tokens
  int64_t global_batch = 0;  // G, sequences per global step, same at every world size
  int rank = 0, world = 1;
  uint64_t seed = 0;       // shuffle key
  int prefetch = 4;        // batches read ahead by the background thread (0 = synchronous)
  int64_t vocab_size = 0;  // required for random:, else checked against the corpus (0: any)
  // Corpora of at most this many tokens are scanned for ids >= vocab_size at open() (1 GiB takes
  // about a second); larger ones are checked window by window as they are read.
  int64_t verify_tokens_max = int64_t{1} << 29;
};

struct Cursor {  // step within epoch of the NEXT batch
  int64_t epoch = 0;
  int64_t step = 0;
  bool operator==(const Cursor& o) const { return epoch == o.epoch && step == o.step; }
};

struct Batch {
  std::vector<int32_t> tokens;  // [rows, seq_len+1] row-major, this rank's slice
  int64_t rows = 0, cols = 0;
  Cursor cursor;                 // where this batch came from
  std::vector<int64_t> windows;  // [rows] the window index of each row (for tests and debugging)
};

class Loader {
 public:
  // Throws samout::UsageError on bad input.
  static std::unique_ptr<Loader> open(const LoaderConfig& cfg);
  virtual ~Loader();
  Batch next();                // this rank's slice of the next global batch; epochs roll over
  Cursor cursor() const;       // cursor of the next batch to be returned
  void seek(const Cursor& c);  // resume: next() returns the batch at c
  int64_t vocab_size() const;
  int64_t pad_id() const;
  int64_t bos_id() const;
  int64_t eos_id() const;
  int64_t windows_per_epoch() const;
  int64_t steps_per_epoch() const;             // floor(windows / G)
  const std::string& tokenizer_model() const;  // serialized SentencePiece model ("" for random:)
  const std::string& spec() const;             // LoaderConfig::spec, for messages

  // The window that row j (in [0, G)) of global step `c` reads: P_epoch(step*G + j).
  int64_t window_at(const Cursor& c, int64_t j) const;

 private:
  struct Impl;
  explicit Loader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Refuses (UsageError naming both specs) a validation corpus whose tokenizer (vocabulary, model,
// special ids) differs from the training corpus's.
void require_same_tokenizer(const Loader& train, const Loader& val);

}  // namespace samout::data
