// Hostile corpus files: every one a UsageError naming the file, on one line, before anything large
// is allocated. The files are real HDF5 files, made by the writer and then damaged with HDF5's
// own API (a resize, a rewritten attribute or dataset) or by flipping bytes on disk.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/resource.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>

#include "corpus_fixture.h"
#include "samout/common/error.h"
#include "samout/data/documents.h"
#include "samout/data/h5.h"
#include "samout/data/loader.h"

namespace samout::data {
namespace {

using ::testing::HasSubstr;
using testing::write_corpus;

constexpr int64_t kT = 8, kG = 4;

LoaderConfig config(const std::string& spec, int prefetch = 0) {
  LoaderConfig c;
  c.spec = spec;
  c.seq_len = kT;
  c.global_batch = kG;
  c.prefetch = prefetch;
  return c;
}

// Caps this process's address space at what it uses now plus `extra` bytes while alive, so that a
// reader allocating what a corrupt header claims fails here (std::bad_alloc, which the tests
// report as an unexpected exception) instead of eating the machine.
class AddressSpaceCap {
 public:
  explicit AddressSpaceCap(uint64_t extra = uint64_t{2} << 30) {
    getrlimit(RLIMIT_AS, &old_);
    std::ifstream status("/proc/self/status");
    std::string key;
    uint64_t kb = 0;
    while (status >> key) {
      if (key == "VmSize:") {
        status >> kb;
        break;
      }
    }
    rlimit cap = old_;
    cap.rlim_cur = kb * 1024 + extra;
    if (old_.rlim_max != RLIM_INFINITY)
      cap.rlim_cur = std::min<rlim_t>(cap.rlim_cur, old_.rlim_max);
    EXPECT_EQ(setrlimit(RLIMIT_AS, &cap), 0);
  }
  ~AddressSpaceCap() { setrlimit(RLIMIT_AS, &old_); }

 private:
  rlimit old_{};
};

class CorpusErrors : public testing::TempDirTest {
 protected:
  // The UsageError message of opening `c` (and reading from it), under the address-space cap.
  std::string error_of(const LoaderConfig& c) {
    AddressSpaceCap cap;
    try {
      auto l = Loader::open(c);
      for (int i = 0; i < 50; ++i) l->next();
    } catch (const UsageError& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();  // one line
      return e.what();
    }
    return "";
  }
  std::string error_of(const std::string& file) {
    const std::string e = error_of(config(file));
    EXPECT_THAT(e, HasSubstr(file));
    return e;
  }

  // A valid corpus of n tokens, token i = i % vocab, chunks of 64 tokens.
  std::string corpus(const std::string& name, int64_t n = 40 * kT + 1, int64_t vocab = 1000,
                     int compression = 0, const std::string& model = "model-A") {
    write_corpus(path(name), n, vocab, 0, model, compression);
    return path(name);
  }

  // Opens the file for writing with HDF5, runs fn(file), closes it.
  template <typename Fn>
  void edit(const std::string& p, Fn&& fn) {
    hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0) << p;
    fn(f);
    ASSERT_GE(H5Fclose(f), 0);
  }
  void set_int(const std::string& p, const char* name, int64_t v) {
    edit(p, [&](hid_t f) {
      if (H5Aexists(f, name) > 0) H5Adelete(f, name);
      write_attr_int(f, name, v);
    });
  }
  void set_str(const std::string& p, const char* name, const std::string& v) {
    edit(p, [&](hid_t f) {
      if (H5Aexists(f, name) > 0) H5Adelete(f, name);
      write_attr_str(f, name, v);
    });
  }
  void drop(const std::string& p, const char* name) {
    edit(p, [&](hid_t f) {
      if (H5Aexists(f, name) > 0)
        H5Adelete(f, name);
      else
        H5Ldelete(f, name, H5P_DEFAULT);
    });
  }
  // Replaces 1-D dataset `name` with `values` of the given file type.
  template <typename T>
  void replace(const std::string& p, const char* name, hid_t file_type, hid_t mem_type,
               const std::vector<T>& values) {
    edit(p, [&](hid_t f) {
      H5Ldelete(f, name, H5P_DEFAULT);
      const hsize_t n = values.size();
      hid_t space = H5Screate_simple(1, &n, nullptr);
      hid_t ds = H5Dcreate2(f, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      if (n > 0) H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
      H5Dclose(ds);
      H5Sclose(space);
    });
  }
  void resize_tokens(const std::string& p, hsize_t n) {
    edit(p, [&](hid_t f) {
      hid_t ds = H5Dopen2(f, "tokens", H5P_DEFAULT);
      ASSERT_GE(H5Dset_extent(ds, &n), 0);
      H5Dclose(ds);
    });
  }
};

// ---- Sizes a header claims -------------------------------------------------------------------

TEST_F(CorpusErrors, TokensResizedTo2Pow47AreRefusedBeforeAllocating) {
  // What h5py's ds.resize((2**47,)) does: the file grows by nothing, HDF5 serves fill values.
  const hsize_t huge = hsize_t{1} << 47;
  for (int gzip : {0, 6}) {
    const std::string p = corpus("huge" + std::to_string(gzip) + ".h5", 40 * kT + 1, 1000, gzip);
    resize_tokens(p, huge);
    EXPECT_THAT(error_of(p), HasSubstr("dataset 'tokens' claims 140737488355328 elements"));
  }
}

TEST_F(CorpusErrors, TokensWithUnwrittenChunksAreRefused) {
  // A smaller resize fits in the file's size, but its new chunks were never written.
  for (int gzip : {0, 6}) {
    const std::string p = corpus("grown" + std::to_string(gzip) + ".h5", 40 * kT + 1, 1000, gzip);
    resize_tokens(p, 40 * kT + 1 + 200);
    EXPECT_THAT(error_of(p), HasSubstr("unwritten chunks"));
  }
}

// Flips a high byte of every place the file stores `value` as 8 little-endian bytes (a dataset's
// dimension, an attribute, an offset), one copy of the file per place; returns the messages.
std::vector<std::string> flip_each(const std::string& p, uint64_t value,
                                   std::function<std::string(const std::string&)> open) {
  std::ifstream in(p, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string key(8, '\0');
  for (int k = 0; k < 8; ++k) key[k] = static_cast<char>((value >> (8 * k)) & 0xff);
  std::vector<std::string> out;
  for (size_t at = bytes.find(key); at != std::string::npos; at = bytes.find(key, at + 1)) {
    std::string copy = bytes;
    copy[at + 5] ^= 0x01;  // + 2^40
    const std::string q = p + ".flip" + std::to_string(at);
    std::ofstream(q, std::ios::binary) << copy;
    out.push_back(open(q));
    std::filesystem::remove(q);
  }
  return out;
}

TEST_F(CorpusErrors, FlippedSizeBytesInTheHeaderAreRefused) {
  const int64_t n = 1543;  // 8 bytes that occur nowhere else by chance
  const std::string p = corpus("c.h5", n, 1000);
  int64_t tokenizer_bytes = 0;
  {
    ShardReader r(p);
    tokenizer_bytes = static_cast<int64_t>(r.meta().tokenizer_model.size());
  }
  auto open = [&](const std::string& q) { return error_of(config(q)); };
  for (uint64_t value : {static_cast<uint64_t>(n), static_cast<uint64_t>(tokenizer_bytes)}) {
    const auto errors = flip_each(p, value, open);
    ASSERT_FALSE(errors.empty()) << value;
    int claims = 0;
    for (const auto& e : errors) claims += e.find("claims") != std::string::npos;
    EXPECT_GE(claims, 1) << "no flip of " << value << " was caught as a size claim";
  }
}

TEST_F(CorpusErrors, VocabSizeBeyondWhatTheTokenDtypeHolds) {
  const std::string narrow = corpus("u16.h5", 40 * kT + 1, 1000);  // uint16 tokens
  set_int(narrow, "vocab_size", 70000);
  EXPECT_THAT(error_of(narrow), HasSubstr("vocab_size 70000 is outside [1, 65535] for uint16"));
  const std::string wide = corpus("u32.h5", 40 * kT + 1, 70000);  // uint32 tokens
  set_int(wide, "vocab_size", 1000000000000);
  EXPECT_THAT(error_of(wide),
              HasSubstr("vocab_size 1000000000000 is outside [1, 2147483648] for uint32"));
  set_int(wide, "vocab_size", 0);
  EXPECT_THAT(error_of(wide), HasSubstr("vocab_size 0 is outside"));
}

// ---- What the format promises -----------------------------------------------------------------

TEST_F(CorpusErrors, FormatAttribute) {
  const std::string p = corpus("c.h5");
  drop(p, "format");
  EXPECT_THAT(error_of(p), HasSubstr("no string attribute 'format'"));
  set_str(p, "format", "numpy-tokens");
  EXPECT_THAT(error_of(p), HasSubstr("format is 'numpy-tokens', expected 'samout-tokens'"));
}

TEST_F(CorpusErrors, DocOffsets) {
  const int64_t n = 40 * kT + 1;
  const std::string p = corpus("c.h5", n);  // one document: offsets {0, n}, num_docs 1
  drop(p, "doc_offsets");
  EXPECT_THAT(error_of(p), HasSubstr("missing dataset 'doc_offsets'"));
  replace<int64_t>(p, "doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {0, n - 5});
  EXPECT_THAT(error_of(p), HasSubstr("doc_offsets end at " + std::to_string(n - 5)));
  set_int(p, "num_docs", 2);
  replace<int64_t>(p, "doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {0, 100, 50});
  EXPECT_THAT(error_of(p), HasSubstr("doc_offsets decrease at document 2 (100 then 50)"));
  replace<int64_t>(p, "doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {7, 100, n});
  EXPECT_THAT(error_of(p), HasSubstr("doc_offsets[0] is 7, expected 0"));
  replace<int64_t>(p, "doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {0, n});
  EXPECT_THAT(error_of(p), HasSubstr("holds 2 offsets, but attribute num_docs 2 needs 3"));
  replace<double>(p, "doc_offsets", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {0, 1.5, double(n)});
  EXPECT_THAT(error_of(p), HasSubstr("'doc_offsets' has dtype float64"));
  replace<int64_t>(p, "doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {0, 100, n});
  EXPECT_EQ(error_of(config(p)),
            "");  // repaired: non-decreasing, from 0 to N, num_docs + 1 entries
}

TEST_F(CorpusErrors, NumTokensMustAgreeWithTheData) {
  const std::string p = corpus("c.h5", 40 * kT + 1);
  set_int(p, "num_tokens", 40 * kT + 2);
  EXPECT_THAT(error_of(p), HasSubstr("attribute num_tokens 322 disagrees with the 321 tokens"));
  drop(p, "num_tokens");
  EXPECT_THAT(error_of(p), HasSubstr("missing integer attribute 'num_tokens'"));
}

TEST_F(CorpusErrors, TokenizerMustLoadAndAgreeWithTheFile) {
  const std::string p = corpus("c.h5", 40 * kT + 1);
  const std::string garbage = "this is not a protobuf";
  replace<uint8_t>(p, "tokenizer", H5T_STD_U8LE, H5T_NATIVE_UINT8,
                   std::vector<uint8_t>(garbage.begin(), garbage.end()));
  EXPECT_THAT(error_of(p), HasSubstr("embedded tokenizer: not a SentencePiece model"));

  const std::string q = corpus("ids.h5", 40 * kT + 1);
  set_int(q, "eos_id", 5);
  EXPECT_THAT(error_of(q), HasSubstr("eos_id 5 disagrees with the embedded tokenizer's 2"));
  set_int(q, "eos_id", 1000);
  EXPECT_THAT(error_of(q), HasSubstr("eos_id 1000 is outside [-1, vocab_size 1000)"));

  const std::string small = corpus("small.h5", 40 * kT + 1, 1000);
  set_int(small, "vocab_size", 100);  // fewer ids than the tokenizer's pieces
  EXPECT_THAT(error_of(small), HasSubstr("pieces, more than vocab_size 100"));

  const std::string kind = corpus("kind.h5");
  set_str(kind, "tokenizer_kind", "tiktoken");
  EXPECT_THAT(error_of(kind), HasSubstr("tokenizer_kind is 'tiktoken', expected 'sentencepiece'"));
}

TEST_F(CorpusErrors, TrainingAndValidationCorporaWithDifferentTokenizers) {
  const std::string train = corpus("train.h5", 40 * kT + 1, 1000, 0, "model-A");
  const std::string val = corpus("val.h5", 40 * kT + 1, 1000, 0, "model-B");
  const std::string same = corpus("val-same.h5", 40 * kT + 1, 1000, 0, "model-A");
  auto t = Loader::open(config(train));
  auto v = Loader::open(config(val));
  try {
    require_same_tokenizer(*t, *v);
    ADD_FAILURE() << "different tokenizers accepted";
  } catch (const UsageError& e) {
    EXPECT_THAT(e.what(),
                HasSubstr(val + " and " + train + " were made with different tokenizers"));
  }
  EXPECT_NO_THROW(require_same_tokenizer(*t, *Loader::open(config(same))));
}

// ---- The environment ---------------------------------------------------------------------------

TEST_F(CorpusErrors, DataNamingADirectorySaysSo) {
  EXPECT_THAT(error_of(config(dir_.string())),
              HasSubstr(dir_.string() + ": is a directory, not a file"));
}

int open_fds() {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) n += !e.path().empty();
  return n;
}

// Sets the soft limit on open files to `limit` while alive.
class FdLimit {
 public:
  explicit FdLimit(rlim_t limit) {
    getrlimit(RLIMIT_NOFILE, &old_);
    rlimit l = old_;
    l.rlim_cur = limit;
    EXPECT_EQ(setrlimit(RLIMIT_NOFILE, &l), 0);
  }
  ~FdLimit() { setrlimit(RLIMIT_NOFILE, &old_); }

 private:
  rlimit old_{};
};

TEST_F(CorpusErrors, RunningOutOfFileDescriptorsIsReportedWithTheLimit) {
  for (int s = 0; s < 40; ++s)
    write_corpus(path("s-" + std::to_string(100 + s) + ".h5"), kT + 1, 1000);
  const rlim_t limit = open_fds() + 20;
  FdLimit cap(limit);
  const std::string e = error_of(config(path("s-*.h5")));
  EXPECT_THAT(e, HasSubstr("too many open files (the limit is " + std::to_string(limit)));
  EXPECT_THAT(e, HasSubstr("ulimit -n"));
  EXPECT_THAT(e, ::testing::Not(HasSubstr("not an HDF5 file")));
}

TEST_F(CorpusErrors, AShardKeepsOneDescriptorOpen) {
  for (int s = 0; s < 40; ++s)
    write_corpus(path("s-" + std::to_string(100 + s) + ".h5"), kT + 1, 1000);
  FdLimit cap(open_fds() + 50);  // 40 shards fit; at two descriptors each they would not
  EXPECT_EQ(error_of(config(path("s-*.h5"))), "");
}

// ---- HDF5's reason, on one line, and no HDF5 error stack on stderr -----------------------------

TEST_F(CorpusErrors, TruncatedFileGivesHdf5sReason) {
  const std::string p = corpus("cut.h5", 4000 * kT + 1);
  std::filesystem::resize_file(p, std::filesystem::file_size(p) / 2);
  EXPECT_THAT(error_of(p), HasSubstr("cannot open HDF5 file: truncated file: eof = "));
}

TEST_F(CorpusErrors, ReadErrorInThePrefetchThreadPrintsNoHdf5Stack) {
  const std::string p = corpus("z.h5", 50 * kT + 1, 1000, /*compression=*/6);
  {
    // Break the zlib header of chunk 3: inflating it fails when a window there is read.
    hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t ds = H5Dopen2(f, "tokens", H5P_DEFAULT);
    const hsize_t coord[1] = {3 * 64};
    unsigned mask = 0;
    haddr_t addr = 0;
    hsize_t size = 0;
    ASSERT_GE(H5Dget_chunk_info_by_coord(ds, coord, &mask, &addr, &size), 0);
    H5Dclose(ds);
    H5Fclose(f);
    std::fstream io(p, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(static_cast<std::streamoff>(addr));
    io.write("\xff\xff\xff\xff", 4);
  }
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // what every program's main() does
  auto c = config(p, /*prefetch=*/2);
  c.verify_tokens_max = 0;  // read only through the prefetch thread
  ::testing::internal::CaptureStderr();
  const std::string e = error_of(c);
  const std::string printed = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(e, HasSubstr(p + ": cannot read token "));
  EXPECT_EQ(printed, "");
}

// ---- Invalid UTF-8 in prep's inputs ------------------------------------------------------------

TEST(Utf8, EachInvalidByteIsReplacedAndCounted) {
  std::string ok = "plain ascii, 床前明月光, 🙂";
  EXPECT_EQ(sanitize_utf8(&ok), 0);
  EXPECT_EQ(ok, "plain ascii, 床前明月光, 🙂");
  const std::string fffd = "\xEF\xBF\xBD";
  struct Case {
    std::string in, out;
    int64_t replaced;
  } cases[] = {
      {"a\xff"
       "b",
       "a" + fffd + "b", 1},                               // never valid
      {"\x80x", fffd + "x", 1},                            // stray continuation byte
      {"\xe5\xba", fffd + fffd, 2},                        // cut sequence at the end
      {"\xc0\xaf", fffd + fffd, 2},                        // overlong '/'
      {"\xed\xa0\x80", fffd + fffd + fffd, 3},             // encoded surrogate U+D800
      {"\xf4\x90\x80\x80", fffd + fffd + fffd + fffd, 4},  // above U+10FFFF
      {"\xe5\xba\x8a\xff", "\xe5\xba\x8a" + fffd, 1},      // valid then invalid
  };
  for (auto& c : cases) {
    std::string s = c.in;
    EXPECT_EQ(sanitize_utf8(&s), c.replaced) << c.out;
    EXPECT_EQ(s, c.out);
  }
}

}  // namespace
}  // namespace samout::data
