// The sharded, shuffled, prefetching window loader (see loader.h), and its window sources: an HDF5
// corpus or a synthetic random stream.
#include "samout/data/loader.h"

#include <glog/logging.h>

#include <algorithm>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "samout/common/error.h"
#include "samout/data/corpus_file.h"
#include "samout/data/files.h"
#include "samout/data/h5.h"
#include "samout/data/permutation.h"
#include "samout/data/tokenizer.h"

namespace samout::data {

namespace {
// Where the loader's windows come from. A window is T+1 consecutive tokens (T inputs, T shifted
// targets); its content depends only on its number, never on who reads it: that makes the
// loader's order independent of the world size.
class WindowSource {
 public:
  virtual ~WindowSource() = default;
  virtual int64_t num_windows() const = 0;
  // Writes window w's T+1 tokens to out. Not thread-safe: one caller at a time.
  virtual void read(int64_t w, int32_t* out) = 0;
  // vocab and special ids; tokenizer_model is "" for synthetic sources.
  virtual const CorpusMeta& meta() const = 0;
};

// Windows of the sorted shards matching `glob`: window i of a shard is its tokens [i*T, i*T + T]
// (the < T tokens left at a shard's end are unused). Validates every shard (corpus_file.h) and
// that all share vocab and tokenizer; scans them all for ids >= vocab when they hold at most
// verify_tokens_max tokens.
class CorpusSource final : public WindowSource {
 public:
  CorpusSource(const std::string& glob, int64_t seq_len, int64_t vocab_size,
               int64_t verify_tokens_max)
      : seq_len_(seq_len) {
    int64_t total_tokens = 0;
    for (const auto& path : expand_glob(glob, "train-*.h5")) {
      shards_.push_back(std::make_unique<ShardReader>(path));
      const ShardReader& s = *shards_.back();
      const ShardReader& first = *shards_.front();
      require(s.meta().vocab_size == first.meta().vocab_size,
              path + ": vocab_size " + std::to_string(s.meta().vocab_size) + " differs from " +
                  first.path() + "'s " + std::to_string(first.meta().vocab_size));
      require(s.meta().tokenizer_model == first.meta().tokenizer_model,
              path + ": tokenizer differs from " + first.path() + "'s");
      // Window i of a shard needs tokens [i*T, i*T+T], so a shard of n tokens has (n-1)/T.
      first_window_.push_back(num_windows_);
      num_windows_ += std::max<int64_t>(0, (s.num_tokens() - 1) / seq_len);
      total_tokens += s.num_tokens();
    }
    meta_ = shards_.front()->meta();
    const std::string& path = shards_.front()->path();

    // Every shard carries the same tokenizer bytes (checked above), so one check covers them all:
    // SentencePiece must load it, its pieces fit the vocabulary, its special ids match the file's.
    const CorpusMeta t = Tokenizer(meta_.tokenizer_model, path + ": embedded tokenizer").meta();
    require(t.vocab_size <= meta_.vocab_size,
            path + ": embedded tokenizer has " + std::to_string(t.vocab_size) +
                " pieces, more than vocab_size " + std::to_string(meta_.vocab_size));
    auto same = [&](const char* name, int64_t file, int64_t model) {
      require(file == model, path + ": " + name + " " + std::to_string(file) +
                                 " disagrees with the embedded tokenizer's " +
                                 std::to_string(model));
    };
    same("pad_id", meta_.pad_id, t.pad_id);
    same("bos_id", meta_.bos_id, t.bos_id);
    same("eos_id", meta_.eos_id, t.eos_id);
    same("unk_id", meta_.unk_id, t.unk_id);

    require(vocab_size == 0 || vocab_size == meta_.vocab_size,
            path + ": corpus vocab_size " + std::to_string(meta_.vocab_size) +
                " differs from the requested " + std::to_string(vocab_size));
    require(num_windows_ > 0, glob + ": corpus of " + std::to_string(total_tokens) +
                                  " tokens is shorter than one window of " +
                                  std::to_string(seq_len + 1) + " tokens");
    if (total_tokens <= verify_tokens_max)
      for (const auto& s : shards_) s->verify_tokens();
  }

  int64_t num_windows() const override { return num_windows_; }
  const CorpusMeta& meta() const override { return meta_; }

  void read(int64_t w, int32_t* out) override {
    CHECK(w >= 0 && w < num_windows_) << w;
    // The shard holding window w: the last one whose first window is <= w.
    const size_t s =
        std::upper_bound(first_window_.begin(), first_window_.end(), w) - first_window_.begin() - 1;
    shards_[s]->read((w - first_window_[s]) * seq_len_, seq_len_ + 1, out);
  }

 private:
  int64_t seq_len_;
  std::vector<std::unique_ptr<ShardReader>> shards_;
  std::vector<int64_t> first_window_;  // global index of each shard's window 0 (ascending)
  int64_t num_windows_ = 0;
  CorpusMeta meta_;
};

// "random:SEED": 2^32 windows of uniform ids in [0, vocab_size), token j of window w a pure
// function of (SEED, w, j).
class RandomSource final : public WindowSource {
 public:
  RandomSource(const std::string& spec, uint64_t seed, int64_t seq_len, int64_t vocab_size)
      : seed_(seed), seq_len_(seq_len) {
    require(vocab_size > 0 && vocab_size <= (int64_t{1} << 31),
            spec + ": needs vocab_size in [1, 2^31], got " + std::to_string(vocab_size));
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

struct Loader::Impl {
  LoaderConfig cfg;
  std::unique_ptr<WindowSource> source;
  int64_t rows = 0, cols = 0;  // this rank's batch shape: G/W x (T+1)
  int64_t steps = 0;           // steps per epoch, floor(M / G)
  Cursor cursor;               // of the next batch next() returns

  // Prefetch state: the producer fills `ready` with the batches from `produce_at` on.
  struct Slot {
    Batch batch;
    std::exception_ptr error;
  };
  std::thread producer;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Slot> ready;
  Cursor produce_at;
  bool stop = false;

  Cursor advance(Cursor c) const {
    if (++c.step == steps) c = Cursor{c.epoch + 1, 0};
    return c;
  }

  FeistelPermutation permutation(int64_t epoch) const {
    // A fresh key per epoch; mixing the epoch first keeps (seed, epoch) pairs from colliding.
    return FeistelPermutation(source->num_windows(),
                              mix64(cfg.seed) ^ mix64(0x243f6a8885a308d3ULL + epoch));
  }

  Batch read_batch(const Cursor& c) {
    Batch b;
    b.rows = rows;
    b.cols = cols;
    b.cursor = c;
    b.tokens.resize(rows * cols);
    b.windows.resize(rows);
    const FeistelPermutation perm = permutation(c.epoch);
    const int64_t first = c.step * cfg.global_batch + cfg.rank * rows;  // this rank's slice
    for (int64_t i = 0; i < rows; ++i) {
      b.windows[i] = static_cast<int64_t>(perm(first + i));
      source->read(b.windows[i], b.tokens.data() + i * cols);
    }
    return b;
  }

  void produce() {
    std::unique_lock<std::mutex> lock(mu);
    while (true) {
      cv.wait(lock, [&] { return stop || static_cast<int>(ready.size()) < cfg.prefetch; });
      if (stop) return;
      const Cursor c = produce_at;
      lock.unlock();
      Slot slot;
      try {
        slot.batch = read_batch(c);
      } catch (...) {
        slot.error = std::current_exception();
      }
      lock.lock();
      if (stop) return;
      const bool failed = slot.error != nullptr;
      ready.push_back(std::move(slot));
      produce_at = advance(c);
      cv.notify_all();
      if (failed) return;  // the consumer rethrows; reading further would only repeat the error
    }
  }

  void start() {
    if (cfg.prefetch <= 0) return;
    stop = false;
    ready.clear();
    produce_at = cursor;
    producer = std::thread([this] {
      quiet_hdf5_errors();  // HDF5's error printing is per thread; errors travel in the slot
      produce();
    });
  }

  void halt() {
    if (!producer.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    cv.notify_all();
    producer.join();
  }

  Batch next() {
    if (cfg.prefetch <= 0) {
      Batch b = read_batch(cursor);
      cursor = advance(cursor);
      return b;
    }
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return !ready.empty(); });
    if (ready.front().error) std::rethrow_exception(ready.front().error);  // kept: fails again
    Batch b = std::move(ready.front().batch);
    ready.pop_front();
    cv.notify_all();
    CHECK(b.cursor == cursor);
    cursor = advance(cursor);
    return b;
  }
};

// ---- Loader ------------------------------------------------------------------------------------

std::unique_ptr<Loader> Loader::open(const LoaderConfig& cfg) {
  const std::string& spec = cfg.spec;
  require(!spec.empty(), "data spec is empty: give a glob of HDF5 shards or random:SEED");
  require(cfg.seq_len > 0, spec + ": seq_len must be positive, got " + std::to_string(cfg.seq_len));
  require(cfg.global_batch > 0,
          spec + ": global_batch must be positive, got " + std::to_string(cfg.global_batch));
  require(
      cfg.world > 0 && cfg.rank >= 0 && cfg.rank < cfg.world,
      "rank " + std::to_string(cfg.rank) + " is outside world size " + std::to_string(cfg.world));
  require(cfg.global_batch % cfg.world == 0, "global_batch " + std::to_string(cfg.global_batch) +
                                                 " is not divisible by world size " +
                                                 std::to_string(cfg.world));

  auto impl = std::make_unique<Impl>();
  impl->cfg = cfg;
  if (spec.rfind("random:", 0) == 0) {
    uint64_t seed = 0;
    const char* end = spec.data() + spec.size();
    const auto [ptr, err] = std::from_chars(spec.data() + 7, end, seed);
    require(spec.size() > 7 && ptr == end && err == std::errc(),
            spec + ": expected random:SEED with a non-negative integer SEED");
    require(cfg.vocab_size > 0, spec + ": random data needs vocab_size > 0");
    impl->source = std::make_unique<RandomSource>(spec, seed, cfg.seq_len, cfg.vocab_size);
  } else {
    impl->source =
        std::make_unique<CorpusSource>(spec, cfg.seq_len, cfg.vocab_size, cfg.verify_tokens_max);
  }
  const int64_t m = impl->source->num_windows();
  require(m >= cfg.global_batch,
          spec + ": " + std::to_string(m) + " windows of " + std::to_string(cfg.seq_len + 1) +
              " tokens is fewer than one global batch of " + std::to_string(cfg.global_batch));
  impl->rows = cfg.global_batch / cfg.world;
  impl->cols = cfg.seq_len + 1;
  impl->steps = m / cfg.global_batch;
  impl->start();
  return std::unique_ptr<Loader>(new Loader(std::move(impl)));
}

Loader::Loader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Loader::~Loader() { impl_->halt(); }

Batch Loader::next() { return impl_->next(); }
Cursor Loader::cursor() const { return impl_->cursor; }

void Loader::seek(const Cursor& c) {
  require(c.epoch >= 0 && c.step >= 0 && c.step < impl_->steps,
          "cursor (epoch " + std::to_string(c.epoch) + ", step " + std::to_string(c.step) +
              ") is outside an epoch of " + std::to_string(impl_->steps) + " steps");
  impl_->halt();
  impl_->cursor = c;
  impl_->start();
}

int64_t Loader::window_at(const Cursor& c, int64_t j) const {
  CHECK(j >= 0 && j < impl_->cfg.global_batch);
  return static_cast<int64_t>(impl_->permutation(c.epoch)(c.step * impl_->cfg.global_batch + j));
}

int64_t Loader::vocab_size() const { return impl_->source->meta().vocab_size; }
int64_t Loader::pad_id() const { return impl_->source->meta().pad_id; }
int64_t Loader::bos_id() const { return impl_->source->meta().bos_id; }
int64_t Loader::eos_id() const { return impl_->source->meta().eos_id; }
int64_t Loader::windows_per_epoch() const { return impl_->source->num_windows(); }
int64_t Loader::steps_per_epoch() const { return impl_->steps; }
const std::string& Loader::tokenizer_model() const { return impl_->source->meta().tokenizer_model; }
const std::string& Loader::spec() const { return impl_->cfg.spec; }

void require_same_tokenizer(const Loader& train, const Loader& val) {
  const std::string both = val.spec() + " and " + train.spec();
  require(val.vocab_size() == train.vocab_size(),
          both + " have different vocabularies (" + std::to_string(val.vocab_size()) + " and " +
              std::to_string(train.vocab_size()) +
              " tokens): prepare both with the same tokenizer");
  require(val.tokenizer_model() == train.tokenizer_model(),
          both +
              " were made with different tokenizers: token ids would mean different text; "
              "prepare the validation corpus with samout_prep --tokenizer=<the training "
              "corpus's tokenizer.model>");
  require(val.pad_id() == train.pad_id() && val.bos_id() == train.bos_id() &&
              val.eos_id() == train.eos_id(),
          both + " have different special ids (pad, bos, eos)");
}

}  // namespace samout::data
