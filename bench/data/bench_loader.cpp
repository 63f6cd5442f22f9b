// Loader throughput: random shuffled windows from a 100M-token HDF5 file, in tokens/s per rank,
// against a raw sequential H5Dread of the same number of bytes (the disk/page-cache ceiling).
//   bench_loader [--file=/tmp/samout_bench_100M.h5] [--seq_len=1024] [--global_batch=32]
// The file is generated on first use (200 MB of uint16) and reused after.
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <hdf5.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "samout/data/corpus_file.h"
#include "samout/data/loader.h"
#include "samout/data/permutation.h"
#include "samout/data/tokenizer.h"

DEFINE_string(file, "/tmp/samout_bench_100M.h5", "Benchmark corpus (created if absent)");
DEFINE_int64(tokens, 100'000'000, "Tokens in the generated corpus");
DEFINE_int64(seq_len, 1024, "T: windows hold T+1 tokens");
DEFINE_int64(global_batch, 32, "G: windows per global step");
DEFINE_int32(prefetch, 4, "Loader read-ahead depth");
DEFINE_double(seconds, 3, "Time each measurement for about this long");

namespace {
using Clock = std::chrono::steady_clock;
using samout::data::Loader;
using samout::data::LoaderConfig;

void make_corpus(const std::string& path, int64_t n) {
  // A real (tiny) tokenizer: the reader refuses a corpus whose tokenizer SentencePiece cannot load.
  std::vector<std::string> lines;
  for (int i = 0; i < 200; ++i)
    lines.push_back("bench corpus line " + std::to_string(i * 7919 % 1000));
  samout::data::TokenizerTrainConfig tc;
  tc.vocab_size = 300;
  samout::data::CorpusMeta meta =
      samout::data::Tokenizer(samout::data::train_tokenizer(lines, tc), "bench").meta();
  meta.vocab_size = 32000;
  samout::data::ShardWriter w(path + ".tmp", meta, samout::data::WriteOptions{});
  std::vector<uint32_t> ids(1 << 20);
  w.begin_doc();
  for (int64_t done = 0; done < n; done += ids.size()) {
    const int64_t m = std::min<int64_t>(ids.size(), n - done);
    for (int64_t i = 0; i < m; ++i) ids[i] = samout::data::mix64(done + i) % 32000;
    w.append(ids.data(), m);
  }
  w.close();
  std::filesystem::rename(path + ".tmp", path);
}

// Tokens/s through Loader::next() for one rank of `world`.
double loader_rate(const std::string& spec, int world, int64_t vocab, int64_t* checksum) {
  LoaderConfig c;
  c.spec = spec;
  c.seq_len = FLAGS_seq_len;
  c.global_batch = FLAGS_global_batch;
  c.world = world;
  c.prefetch = FLAGS_prefetch;
  c.vocab_size = vocab;
  c.verify_tokens_max = 0;  // the open-time scan is not what is measured here
  auto loader = Loader::open(c);
  for (int i = 0; i < 4; ++i) loader->next();  // warm up: fill the prefetch queue, page cache
  int64_t tokens = 0;
  const auto t0 = Clock::now();
  double secs = 0;
  while (secs < FLAGS_seconds) {
    const auto b = loader->next();
    *checksum += b.tokens[b.tokens.size() / 2];
    tokens += static_cast<int64_t>(b.tokens.size());
    secs = std::chrono::duration<double>(Clock::now() - t0).count();
  }
  return tokens / secs;
}

// Tokens/s of plain H5Dread over the file front to back, 4M tokens a call.
double sequential_rate(const std::string& path, int64_t* checksum) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t ds = H5Dopen2(f, "tokens", H5P_DEFAULT);
  hid_t fs = H5Dget_space(ds);
  hsize_t n = 0;
  H5Sget_simple_extent_dims(fs, &n, nullptr);
  const hsize_t block = hsize_t{1} << 22;
  std::vector<uint16_t> buf(block);
  hid_t ms = H5Screate_simple(1, &block, nullptr);
  int64_t tokens = 0;
  const auto t0 = Clock::now();
  double secs = 0;
  for (hsize_t start = 0; secs < FLAGS_seconds; start = (start + block) % (n - block)) {
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, nullptr, &block, nullptr);
    CHECK_GE(H5Dread(ds, H5T_NATIVE_UINT16, ms, fs, H5P_DEFAULT, buf.data()), 0);
    *checksum += buf[block / 2];
    tokens += block;
    secs = std::chrono::duration<double>(Clock::now() - t0).count();
  }
  H5Sclose(ms);
  H5Sclose(fs);
  H5Dclose(ds);
  H5Fclose(f);
  return tokens / secs;
}
}  // namespace

int main(int argc, char** argv) {
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  if (!std::filesystem::exists(FLAGS_file)) {
    std::printf("creating %s (%ld tokens)\n", FLAGS_file.c_str(), static_cast<long>(FLAGS_tokens));
    make_corpus(FLAGS_file, FLAGS_tokens);
  }
  int64_t sum = 0;
  const double seq = sequential_rate(FLAGS_file, &sum);
  std::printf("T=%ld G=%ld prefetch=%d, %s\n", static_cast<long>(FLAGS_seq_len),
              static_cast<long>(FLAGS_global_batch), FLAGS_prefetch, FLAGS_file.c_str());
  std::printf("%-40s %8.1f M tokens/s\n", "baseline: sequential H5Dread (4M/call)", seq / 1e6);
  for (int world : {1, 2}) {
    const double r = loader_rate(FLAGS_file, world, 0, &sum);
    std::printf(
        "loader, shuffled windows, rank 0 of W=%d  %8.1f M tokens/s per rank  (%.2fx "
        "sequential)\n",
        world, r / 1e6, r / seq);
  }
  const double rnd = loader_rate("random:1", 1, 32000, &sum);
  std::printf("loader, random:1 synthetic, W=1       %8.1f M tokens/s  (%.2fx sequential)\n",
              rnd / 1e6, rnd / seq);
  std::printf("(checksum %ld)\n", static_cast<long>(sum));
  return 0;
}
