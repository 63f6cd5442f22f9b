// The prep pipeline: sample, train tokenizer, encode in parallel, write shards (see prep.h).
#include "samout/data/prep.h"

#include <glog/logging.h>
#include <unistd.h>

#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "samout/common/error.h"
#include "samout/data/files.h"
#include "samout/data/permutation.h"
#include "samout/data/progress.h"
#include "samout/data/shard_set.h"

namespace samout::data {

namespace fs = std::filesystem;

namespace {
constexpr size_t kChunkBytes = size_t{256} << 10;  // text handed to one encoding task

// A uniform double in [0, 1) from a key: decides splits and samples, reproducibly.
double unit(uint64_t seed, uint64_t salt, int64_t doc) {
  return static_cast<double>(mix64(seed ^ mix64(salt + mix64(static_cast<uint64_t>(doc)))) >> 11) *
         0x1.0p-53;
}
bool is_val(const PrepConfig& cfg, int64_t doc) {
  return unit(cfg.seed, 1, doc) < cfg.val_fraction;
}

void validate(const PrepConfig& cfg) {
  require(!cfg.inputs.empty(), "no --input given");
  require(!cfg.output.empty(), "no --output directory given");
  require(!fs::exists(cfg.output) || fs::is_directory(cfg.output),
          cfg.output + ": exists and is not a directory");
  require(cfg.shard_tokens > 0, "--shard_tokens must be positive");
  require(cfg.val_fraction >= 0 && cfg.val_fraction < 1, "--val_fraction must be in [0, 1)");
  require(cfg.write.compression >= 0 && cfg.write.compression <= 9, "--compression must be 0-9");
  require(cfg.write.chunk_tokens > 0, "--chunk_tokens must be positive");
  require(cfg.tokenizer.empty() ? cfg.train.vocab_size > 0 : true, "--vocab_size must be positive");
}

// Calls fn(doc_index, doc, bytes) over every document of every file, in order; bytes is how far
// into the concatenated inputs the reader has got (for progress).
template <typename Fn>
void for_each_input_doc(const std::vector<std::string>& files, const PrepConfig& cfg, Fn&& fn) {
  int64_t base = 0, doc = 0;
  for (const auto& path : files) {
    for_each_document(path, cfg.text, [&](std::string&& text, int64_t bytes) {
      fn(doc++, std::move(text), base + bytes);
    });
    base += static_cast<int64_t>(fs::file_size(path));
  }
}

std::string train_from_inputs(const std::vector<std::string>& files, int64_t total_bytes,
                              const PrepConfig& cfg, int threads) {
  const double rate = std::min(
      1.0, static_cast<double>(cfg.tokenizer_train_bytes) / std::max<int64_t>(1, total_bytes));
  std::vector<std::string> lines;
  Progress progress("read for tokenizer", total_bytes, cfg.progress);
  for_each_input_doc(files, cfg, [&](int64_t d, std::string&& text, int64_t bytes) {
    progress.update(bytes);
    if (is_val(cfg, d) || unit(cfg.seed, 2, d) >= rate) return;
    size_t start = 0;
    while (start < text.size()) {  // SentencePiece trains on lines; "\n" is a piece of its own
      size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      if (end > start) lines.emplace_back(text, start, end - start);
      start = end + 1;
    }
  });
  progress.finish();
  std::printf("training tokenizer: BPE, vocab %ld, on %zu lines\n",
              static_cast<long>(cfg.train.vocab_size), lines.size());
  std::fflush(stdout);
  TokenizerTrainConfig train = cfg.train;
  train.threads = threads;
  return train_tokenizer(lines, train);
}

// Moves the finished files from tmp into out, replacing an earlier run's shards.
void commit(const fs::path& tmp, const fs::path& out, const std::vector<std::string>& names) {
  fs::create_directories(out);
  for (const auto& entry : fs::directory_iterator(out)) {
    const std::string n = entry.path().filename().string();
    const bool ours =
        (n.rfind("train-", 0) == 0 || n.rfind("val-", 0) == 0) && entry.path().extension() == ".h5";
    if (ours) fs::remove(entry.path());  // stale shards would join the next run's glob
  }
  for (const auto& n : names) fs::rename(tmp / n, out / n);
  fs::remove_all(tmp);
}
}  // namespace

PrepResult run_prep(const PrepConfig& cfg) {
  validate(cfg);
  const std::vector<std::string> files = expand_globs(cfg.inputs);
  PrepResult result;
  for (const auto& f : files) result.input_bytes += static_cast<int64_t>(fs::file_size(f));
  const int threads =
      cfg.threads > 0 ? cfg.threads : std::max(1u, std::thread::hardware_concurrency());

  std::string model;
  if (cfg.tokenizer.empty()) {
    model = train_from_inputs(files, result.input_bytes, cfg, threads);
  }
  const Tokenizer tok = cfg.tokenizer.empty() ? Tokenizer(model, "trained tokenizer")
                                              : Tokenizer::from_file(cfg.tokenizer);
  const CorpusMeta& meta = tok.meta();
  result.vocab_size = meta.vocab_size;

  fs::path out = fs::path(cfg.output).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();  // "dir/" -> "dir"
  const fs::path tmp = out.string() + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    ShardSet train(tmp.string(), "train", meta, cfg.write, cfg.shard_tokens);
    ShardSet val(tmp.string(), "val", meta, cfg.write, cfg.shard_tokens);
    const auto t0 = std::chrono::steady_clock::now();

    // Ordered pipeline: chunks are encoded concurrently but written in input order, with at
    // most `threads` chunks in flight so memory stays bounded whatever the corpus size.
    // Progress counts input bytes whose tokens are written, so the rate is the encoding rate.
    struct Chunk {
      int64_t first_doc = 0;
      std::vector<std::string> docs;
      size_t text_bytes = 0;
      int64_t input_end = 0;  // input bytes read up to the chunk's last document
    };
    using Encoded = std::vector<std::vector<uint32_t>>;
    struct InFlight {
      int64_t first_doc, input_end;
      std::future<Encoded> encoded;
    };
    std::deque<InFlight> inflight;
    Progress progress("encode", result.input_bytes, cfg.progress);
    auto write_oldest = [&] {
      InFlight job = std::move(inflight.front());
      inflight.pop_front();
      const Encoded enc = job.encoded.get();
      for (size_t k = 0; k < enc.size(); ++k)
        (is_val(cfg, job.first_doc + static_cast<int64_t>(k)) ? val : train).add_doc(enc[k]);
      progress.update(job.input_end);
    };
    auto submit = [&](Chunk&& chunk) {
      auto docs = std::make_shared<std::vector<std::string>>(std::move(chunk.docs));
      inflight.push_back(
          {chunk.first_doc, chunk.input_end, std::async(std::launch::async, [docs, &tok, &meta] {
             Encoded enc(docs->size());
             std::vector<int> ids;
             for (size_t k = 0; k < docs->size(); ++k) {
               tok.encode((*docs)[k], &ids);
               enc[k].assign(ids.begin(), ids.end());
               enc[k].push_back(static_cast<uint32_t>(meta.eos_id));  // every document ends in eos
             }
             return enc;
           })});
      while (static_cast<int>(inflight.size()) >= threads) write_oldest();
    };
    Chunk chunk;
    for_each_input_doc(files, cfg, [&](int64_t d, std::string&& text, int64_t bytes) {
      if (chunk.docs.empty()) chunk.first_doc = d;
      chunk.text_bytes += text.size();
      chunk.input_end = bytes;
      chunk.docs.push_back(std::move(text));
      if (chunk.text_bytes >= kChunkBytes) {
        submit(std::move(chunk));
        chunk = Chunk();
      }
    });
    if (!chunk.docs.empty()) submit(std::move(chunk));
    while (!inflight.empty()) write_oldest();
    progress.finish();

    result.train_docs = train.num_docs();
    result.train_tokens = train.num_tokens();
    result.val_docs = val.num_docs();
    result.val_tokens = val.num_tokens();
    require(result.train_docs > 0, "all " + std::to_string(result.val_docs) +
                                       " documents went to validation: lower --val_fraction");
    result.files = train.finish();
    for (const auto& n : val.finish()) result.files.push_back(n);
    {
      std::ofstream m(tmp / "tokenizer.model", std::ios::binary);
      m.write(meta.tokenizer_model.data(),
              static_cast<std::streamsize>(meta.tokenizer_model.size()));
      CHECK(m.good()) << "writing " << (tmp / "tokenizer.model");
    }
    result.files.push_back("tokenizer.model");
    result.encode_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    commit(tmp, out, result.files);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  return result;
}

}  // namespace samout::data
