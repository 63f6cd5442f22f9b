// Windows of an HDF5 token corpus (see window_source.h).
#include <glog/logging.h>
#include <sys/stat.h>

#include <algorithm>

#include "samout/common/error.h"
#include "samout/data/files.h"
#include "samout/data/tokenizer.h"
#include "samout/data/window_source.h"

namespace samout::data {

namespace {
class CorpusSource final : public WindowSource {
 public:
  CorpusSource(const std::string& glob, int64_t seq_len, int64_t vocab_size,
               int64_t verify_tokens_max)
      : seq_len_(seq_len) {
    struct stat st {};
    require(::stat(glob.c_str(), &st) != 0 || !S_ISDIR(st.st_mode),
            glob + ": is a directory, not a file (give a glob of its shards, such as " + glob +
                (glob.back() == '/' ? "" : "/") + "train-*.h5)");
    int64_t total_tokens = 0;
    for (const auto& path : expand_glob(glob)) {
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
    check_tokenizer(shards_.front()->path());
    require(vocab_size == 0 || vocab_size == meta_.vocab_size,
            shards_.front()->path() + ": corpus vocab_size " + std::to_string(meta_.vocab_size) +
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
  // Every shard carries the same tokenizer bytes (checked above), so loading the first shard's
  // checks them all: SentencePiece must load it, its pieces must fit the vocabulary, and its
  // special ids must be the ones the file declares.
  void check_tokenizer(const std::string& path) const {
    const Tokenizer tok(meta_.tokenizer_model, path + ": embedded tokenizer");
    const CorpusMeta& t = tok.meta();
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
  }

  int64_t seq_len_;
  std::vector<std::unique_ptr<ShardReader>> shards_;
  std::vector<int64_t> first_window_;  // global index of each shard's window 0 (ascending)
  int64_t num_windows_ = 0;
  CorpusMeta meta_;
};
}  // namespace

std::unique_ptr<WindowSource> open_corpus(const std::string& glob, int64_t seq_len,
                                          int64_t vocab_size, int64_t verify_tokens_max) {
  return std::make_unique<CorpusSource>(glob, seq_len, vocab_size, verify_tokens_max);
}

}  // namespace samout::data
