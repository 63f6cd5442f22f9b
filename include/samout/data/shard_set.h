// A sequence of corpus files of bounded size: <dir>/<prefix>-00000.h5, -00001.h5, ...
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "samout/data/corpus_file.h"

namespace samout::data {

class ShardSet {
 public:
  // Each file holds at most shard_tokens tokens; a document that would cross the limit is cut
  // and continues as the first document of the next file (so the bound is strict).
  ShardSet(std::string dir, std::string prefix, CorpusMeta meta, WriteOptions opt,
           int64_t shard_tokens);
  void add_doc(const std::vector<uint32_t>& ids);
  // Closes the last file; returns the file names (without dir), in order.
  std::vector<std::string> finish();
  int64_t num_tokens() const { return tokens_; }
  int64_t num_docs() const { return docs_; }

 private:
  std::string dir_, prefix_;
  CorpusMeta meta_;
  WriteOptions opt_;
  int64_t shard_tokens_;
  std::unique_ptr<ShardWriter> cur_;
  std::vector<std::string> names_;
  int64_t tokens_ = 0, docs_ = 0;
};

}  // namespace samout::data
