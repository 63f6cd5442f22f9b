// The sharded, shuffled, prefetching window loader (see loader.h).
#include "samout/data/loader.h"

#include <glog/logging.h>

#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "samout/common/error.h"
#include "samout/data/h5.h"
#include "samout/data/permutation.h"
#include "samout/data/window_source.h"

namespace samout::data {

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
    Slot slot = std::move(ready.front());
    if (slot.error) std::rethrow_exception(slot.error);  // keep the slot: next() fails again
    ready.pop_front();
    cv.notify_all();
    CHECK(slot.batch.cursor == cursor);
    cursor = advance(cursor);
    return std::move(slot.batch);
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
    const std::string seed = spec.substr(7);
    require(!seed.empty() && seed.find_first_not_of("0123456789") == std::string::npos,
            spec + ": expected random:SEED with a non-negative integer SEED");
    require(cfg.vocab_size > 0, spec + ": random data needs vocab_size > 0");
    impl->source = open_random(std::stoull(seed), cfg.seq_len, cfg.vocab_size);
  } else {
    impl->source = open_corpus(spec, cfg.seq_len, cfg.vocab_size, cfg.verify_tokens_max);
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
