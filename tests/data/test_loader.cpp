// The loader: world-size-independent order, full epoch coverage, resume, and its errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include "corpus_fixture.h"
#include "samout/common/error.h"
#include "samout/data/loader.h"

namespace samout::data {
namespace {

using testing::TempDirTest;
using testing::write_corpus;

constexpr int64_t kT = 8, kG = 24;  // 24 divides by every world size tested: 1, 2, 3, 8

LoaderConfig config(const std::string& spec, int rank = 0, int world = 1, int prefetch = 2) {
  LoaderConfig c;
  c.spec = spec;
  c.seq_len = kT;
  c.global_batch = kG;
  c.rank = rank;
  c.world = world;
  c.seed = 42;
  c.prefetch = prefetch;
  return c;
}

// Global batches as seen by a world of W ranks: rank slices concatenated in rank order.
std::vector<std::vector<int32_t>> global_batches(const std::string& spec, int world, int steps,
                                                 std::vector<std::vector<int64_t>>* windows,
                                                 int64_t vocab = 0) {
  std::vector<std::unique_ptr<Loader>> ranks;
  for (int r = 0; r < world; ++r) {
    auto c = config(spec, r, world);
    c.vocab_size = vocab;
    ranks.push_back(Loader::open(c));
  }
  std::vector<std::vector<int32_t>> out(steps);
  windows->assign(steps, {});
  for (int s = 0; s < steps; ++s) {
    for (auto& l : ranks) {
      Batch b = l->next();
      EXPECT_EQ(b.rows, kG / world);
      EXPECT_EQ(b.cols, kT + 1);
      out[s].insert(out[s].end(), b.tokens.begin(), b.tokens.end());
      (*windows)[s].insert((*windows)[s].end(), b.windows.begin(), b.windows.end());
    }
  }
  return out;
}

class LoaderTest : public TempDirTest {};

TEST_F(LoaderTest, EpochsCoverEveryWindowOnceAndBatchesMatchAcrossWorldSizes) {
  const int64_t windows = kG * 5;  // 5 steps per epoch, no leftover
  write_corpus(path("c.h5"), windows * kT + 1, /*vocab=*/1000);
  const int steps = 15;  // three epochs
  std::vector<std::vector<int64_t>> ref_windows;
  const auto ref = global_batches(path("c.h5"), 1, steps, &ref_windows);
  for (int world : {1, 2, 3, 8}) {
    std::vector<std::vector<int64_t>> win;
    EXPECT_EQ(global_batches(path("c.h5"), world, steps, &win), ref) << "world " << world;
    EXPECT_EQ(win, ref_windows) << "world " << world;
  }
  std::vector<std::vector<int64_t>> epochs(3);
  for (int s = 0; s < steps; ++s) {
    auto& e = epochs[s / 5];
    e.insert(e.end(), ref_windows[s].begin(), ref_windows[s].end());
    // Row content is the window's own tokens: window w starts at token w*T.
    for (int64_t i = 0; i < kG; ++i)
      for (int64_t j = 0; j <= kT; ++j)
        ASSERT_EQ(ref[s][i * (kT + 1) + j], (ref_windows[s][i] * kT + j) % 1000);
  }
  for (auto& e : epochs) {
    std::vector<int64_t> sorted = e;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t w = 0; w < windows; ++w) ASSERT_EQ(sorted[w], w);  // each window exactly once
  }
  EXPECT_NE(epochs[0], epochs[1]);  // a new shuffle each epoch
  std::vector<int64_t> identity(windows);
  for (int64_t w = 0; w < windows; ++w) identity[w] = w;
  EXPECT_NE(epochs[0], identity);
}

TEST_F(LoaderTest, LeftoverWindowsAreDroppedNotRepeated) {
  const int64_t windows = kG * 3 + 7;
  write_corpus(path("c.h5"), windows * kT + 1 + 3, 1000);
  auto l = Loader::open(config(path("c.h5"), 1, 3));
  EXPECT_EQ(l->windows_per_epoch(), windows);
  EXPECT_EQ(l->steps_per_epoch(), 3);
  std::set<int64_t> seen;
  for (int s = 0; s < 3; ++s) {
    const Batch b = l->next();
    for (int64_t i = 0; i < b.rows; ++i) {
      EXPECT_TRUE(seen.insert(b.windows[i]).second) << b.windows[i];
      EXPECT_EQ(l->window_at(b.cursor, kG / 3 + i), b.windows[i]);  // rank 1 of 3: rows 8..15
    }
  }
  EXPECT_EQ(seen.size(), 3u * kG / 3);
  EXPECT_EQ(l->cursor(), (Cursor{1, 0}));
}

TEST_F(LoaderTest, ResumingFromACursorGivesTheSameWindows) {
  write_corpus(path("c.h5"), kG * 4 * kT + 1, 1000);
  for (int prefetch : {0, 3}) {
    auto a = Loader::open(config(path("c.h5"), 1, 2, prefetch));
    std::vector<Batch> run;
    Cursor saved;
    for (int s = 0; s < 10; ++s) {
      if (s == 6) saved = a->cursor();
      run.push_back(a->next());
    }
    EXPECT_EQ(saved, (Cursor{1, 2}));
    EXPECT_EQ(run[6].cursor, saved);
    auto b = Loader::open(config(path("c.h5"), 1, 2, 3 - prefetch));  // other prefetch mode
    b->seek(saved);
    for (int s = 6; s < 10; ++s) {
      Batch x = b->next();
      EXPECT_EQ(x.tokens, run[s].tokens) << "step " << s;
      EXPECT_EQ(x.cursor, run[s].cursor);
    }
    a->seek(Cursor{0, 1});  // seeking back mid-stream drops what was read ahead
    EXPECT_EQ(a->next().tokens, run[1].tokens);
    EXPECT_THROW(a->seek(Cursor{0, 4}), UsageError);  // epoch has 4 steps: 0..3
  }
}

TEST_F(LoaderTest, ShardsFormOneCorpusAndWideTokensWork) {
  const int64_t vocab = 70000;  // > 65535: stored as uint32
  write_corpus(path("s-0.h5"), 10 * kT + 1, vocab, 0);
  write_corpus(path("s-1.h5"), 20 * kT + 5, vocab, 66000);
  write_corpus(path("s-2.h5"), 18 * kT + 1, vocab, 50000);
  auto c = config(path("s-*.h5"), 0, 1, 0);
  auto l = Loader::open(c);
  EXPECT_EQ(l->windows_per_epoch(), 48);
  EXPECT_EQ(l->vocab_size(), vocab);
  EXPECT_EQ(l->tokenizer_model(), testing::tokenizer_model("model-A"));
  EXPECT_EQ(l->pad_id(), 3);
  EXPECT_EQ(l->eos_id(), 2);
  for (int s = 0; s < 2; ++s) {
    Batch b = l->next();
    for (int64_t i = 0; i < b.rows; ++i) {
      const int64_t w = b.windows[i];
      const int64_t shard = w < 10 ? 0 : w < 30 ? 1 : 2;
      const int64_t local = w - (shard == 0 ? 0 : shard == 1 ? 10 : 30);
      const int64_t base = shard == 0 ? 0 : shard == 1 ? 66000 : 50000;
      for (int64_t j = 0; j <= kT; ++j)
        ASSERT_EQ(b.tokens[i * b.cols + j], (base + local * kT + j) % vocab) << "window " << w;
    }
  }
}

TEST_F(LoaderTest, CompressedFilesServeTheSameWindows) {
  // Uncompressed chunks are pread() directly; gzip ones go through HDF5 and its chunk cache.
  write_corpus(path("plain.h5"), 50 * kT + 1, 1000, 0, "model-A", 0);
  write_corpus(path("gzip.h5"), 50 * kT + 1, 1000, 0, "model-A", 6);
  auto a = Loader::open(config(path("plain.h5")));
  auto b = Loader::open(config(path("gzip.h5")));
  for (int s = 0; s < 4; ++s) EXPECT_EQ(a->next().tokens, b->next().tokens);
  ShardReader r(path("gzip.h5"));
  EXPECT_EQ(r.meta().tokenizer_kind, "sentencepiece");
  EXPECT_EQ(r.num_tokens(), 50 * kT + 1);
  EXPECT_EQ(r.doc_offsets(), (std::vector<int64_t>{0, 50 * kT + 1}));
}

TEST(RandomSource, ContentIsAPureFunctionOfSeedAndWindow) {
  std::vector<std::vector<int64_t>> w1, w8;
  const auto a = global_batches("random:7", 1, 3, &w1, /*vocab=*/50);
  const auto b = global_batches("random:7", 8, 3, &w8, 50);
  EXPECT_EQ(a, b);
  EXPECT_EQ(w1, w8);
  std::vector<std::vector<int64_t>> wo;
  EXPECT_NE(global_batches("random:8", 1, 3, &wo, 50), a);
  std::vector<int> hist(50, 0);
  for (const auto& batch : a)
    for (int32_t t : batch) {
      ASSERT_TRUE(t >= 0 && t < 50);
      ++hist[t];
    }
  for (int h : hist) EXPECT_GT(h, 0);
  auto c = config("random:7");
  c.vocab_size = 50;
  auto l = Loader::open(c);
  EXPECT_EQ(l->pad_id(), -1);
  EXPECT_EQ(l->tokenizer_model(), "");
}

// ---- Bad input: each a UsageError naming the file and the problem ----------------------------

class LoaderErrors : public TempDirTest {
 protected:
  // The message of the UsageError that open() (then next(), if open succeeds) throws.
  std::string error_of(LoaderConfig c) {
    try {
      auto l = Loader::open(c);
      for (int i = 0; i < 100; ++i) l->next();
    } catch (const UsageError& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);  // one line
      return e.what();
    }
    ADD_FAILURE() << "no UsageError for " << c.spec;
    return "";
  }
  // An HDF5 file with the corpus attributes and a `tokens` dataset of the given type (or none).
  void write_h5(const std::string& p, hid_t tokens_type) {
    hid_t f = H5Fcreate(p.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    write_attr_str(f, "format", "samout-tokens");
    write_attr_int(f, "format_version", 1);
    write_attr_int(f, "vocab_size", 1000);
    hsize_t n = 1000;
    hid_t space = H5Screate_simple(1, &n, nullptr);
    hid_t tok =
        H5Dcreate2(f, "tokenizer", H5T_STD_U8LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(tok);
    if (tokens_type >= 0)
      H5Dclose(H5Dcreate2(f, "tokens", tokens_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Sclose(space);
    H5Fclose(f);
  }
};

MATCHER_P2(Names, file, problem, "") {
  return arg.find(file) != std::string::npos && arg.find(problem) != std::string::npos;
}

TEST_F(LoaderErrors, MissingFileAndEmptyGlob) {
  EXPECT_THAT(error_of(config(path("nope.h5"))), Names(path("nope.h5"), "no such file"));
  EXPECT_THAT(error_of(config(path("x-*.h5"))), Names(path("x-*.h5"), "matches no file"));
}

TEST_F(LoaderErrors, NotHdf5MissingDatasetWrongDtype) {
  std::ofstream(path("text.h5")) << "just some text\n";
  EXPECT_THAT(error_of(config(path("text.h5"))), Names(path("text.h5"), "not an HDF5 file"));
  write_h5(path("missing.h5"), -1);
  EXPECT_THAT(error_of(config(path("missing.h5"))),
              Names(path("missing.h5"), "missing dataset 'tokens'"));
  write_h5(path("float.h5"), H5T_IEEE_F32LE);
  EXPECT_THAT(error_of(config(path("float.h5"))),
              Names(path("float.h5"), "dtype float32, expected uint16 or uint32"));
  write_h5(path("int64.h5"), H5T_STD_I64LE);
  EXPECT_THAT(error_of(config(path("int64.h5"))), Names(path("int64.h5"), "dtype int64"));
}

TEST_F(LoaderErrors, TruncatedFile) {
  write_corpus(path("cut.h5"), 4000 * kT + 1, 1000);
  std::filesystem::resize_file(path("cut.h5"), std::filesystem::file_size(path("cut.h5")) / 2);
  EXPECT_THAT(error_of(config(path("cut.h5"))), Names(path("cut.h5"), "HDF5"));
}

TEST_F(LoaderErrors, TokenAtOrAboveVocab) {
  // 1000 tokens (i % 1000) in a file that claims a vocab of 1000, but one token is 1000.
  {
    ShardWriter w(path("bad.h5"), testing::test_meta(1001), WriteOptions{64, 0});
    std::vector<uint32_t> ids(30 * kT + 1, 5);
    ids[200] = 1000;
    w.begin_doc();
    w.append(ids.data(), ids.size());
    w.close();
    hid_t f = H5Fopen(path("bad.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    H5Adelete(f, "vocab_size");
    write_attr_int(f, "vocab_size", 1000);
    H5Fclose(f);
  }
  EXPECT_THAT(error_of(config(path("bad.h5"))),
              Names(path("bad.h5"), "token id 1000 at position 200 is >= vocab_size 1000"));
  auto lazy = config(path("bad.h5"));  // too big to scan at open: caught when its window is read
  lazy.verify_tokens_max = 0;
  EXPECT_THAT(error_of(lazy), Names(path("bad.h5"), "token id 1000"));
  // The prefetcher keeps the error: every later next() throws it again (no abort, no batch).
  auto l = Loader::open(lazy);
  std::string first;
  for (int i = 0; i < 100 && first.empty(); ++i) {
    try {
      l->next();
    } catch (const UsageError& e) {
      first = e.what();
    }
  }
  EXPECT_THAT(first, Names(path("bad.h5"), "token id 1000"));
  for (int again = 0; again < 2; ++again) {
    try {
      l->next();
      ADD_FAILURE() << "next() after a read error returned a batch";
    } catch (const UsageError& e) {
      EXPECT_EQ(std::string(e.what()), first);
    }
  }
  auto wrong_vocab = config(path("bad.h5"));
  wrong_vocab.vocab_size = 512;
  EXPECT_THAT(error_of(wrong_vocab), Names(path("bad.h5"), "differs from the requested 512"));
}

TEST_F(LoaderErrors, ShardsWithDifferentTokenizers) {
  write_corpus(path("s-0.h5"), 40 * kT, 1000, 0, "model-A");
  write_corpus(path("s-1.h5"), 40 * kT, 1000, 0, "model-B");
  EXPECT_THAT(error_of(config(path("s-*.h5"))),
              Names(path("s-1.h5"), "tokenizer differs from " + path("s-0.h5")));
}

TEST_F(LoaderErrors, CorpusShorterThanOneWindowOrBatch) {
  write_corpus(path("short.h5"), kT, 1000);  // T tokens: a window needs T+1
  EXPECT_THAT(error_of(config(path("short.h5"))),
              Names(path("short.h5"), "shorter than one window of 9 tokens"));
  write_corpus(path("few.h5"), 5 * kT + 1, 1000);  // 5 windows < G = 24
  EXPECT_THAT(error_of(config(path("few.h5"))), Names(path("few.h5"), "fewer than one global"));
}

TEST_F(LoaderErrors, GlobalBatchNotDivisibleByWorld) {
  write_corpus(path("c.h5"), 100 * kT + 1, 1000);
  EXPECT_THAT(error_of(config(path("c.h5"), 0, 5)),
              ::testing::HasSubstr("global_batch 24 is not divisible by world size 5"));
  auto c = config("random:x");
  c.vocab_size = 10;
  EXPECT_THAT(error_of(c), ::testing::HasSubstr("random:x"));
  EXPECT_THAT(error_of(config("random:1")), ::testing::HasSubstr("needs vocab_size"));
}

}  // namespace
}  // namespace samout::data
