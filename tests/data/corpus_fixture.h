// Helpers for the data tests: temp directories and small synthetic corpus files.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "samout/data/corpus_file.h"
#include "samout/data/tokenizer.h"

namespace samout::data::testing {

// A fresh directory under the system temp dir, removed with the fixture.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           (std::string("samout_data_") + info->test_suite_name() + "_" + info->name() + "_" +
            std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::filesystem::path dir_;
};

// A real SentencePiece model (readers refuse anything else) of at most kTestPieces pieces, trained
// once per name on a few lines that mention the name, so "model-A" and "model-B" differ. Special
// ids: unk 0, bos 1, eos 2, pad 3.
constexpr int64_t kTestPieces = 320;
inline const std::string& tokenizer_model(const std::string& name) {
  static std::mutex mu;
  static std::map<std::string, std::string> models;
  std::lock_guard<std::mutex> lock(mu);
  auto it = models.find(name);
  if (it == models.end()) {
    std::vector<std::string> lines;
    for (int i = 0; i < 200; ++i)
      lines.push_back(name + " line " + std::to_string(i * 7919 % 1000) + " of the test corpus");
    TokenizerTrainConfig cfg;
    cfg.vocab_size = kTestPieces;
    it = models.emplace(name, train_tokenizer(lines, cfg)).first;
  }
  return it->second;
}

inline CorpusMeta test_meta(int64_t vocab, const std::string& model = "model-A") {
  CorpusMeta m;
  m.vocab_size = vocab;
  m.unk_id = 0, m.bos_id = 1, m.eos_id = 2, m.pad_id = 3;
  m.tokenizer_kind = "sentencepiece";
  m.tokenizer_model = tokenizer_model(model);
  return m;
}

// Token i of the file is (base + i) % vocab, so a window's content tells where it came from.
// Small chunks make windows straddle chunk boundaries.
inline void write_corpus(const std::string& path, int64_t n, int64_t vocab, int64_t base = 0,
                         const std::string& model = "model-A", int compression = 0) {
  ShardWriter w(path, test_meta(vocab, model), WriteOptions{/*chunk_tokens=*/64, compression});
  std::vector<uint32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<uint32_t>((base + i) % vocab);
  w.begin_doc();
  w.append(ids.data(), n);
  w.close();
}

}  // namespace samout::data::testing
