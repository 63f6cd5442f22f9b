// SentencePiece tokenizers: training one for a corpus, and encoding/decoding with it.
//
// Trained models are BPE with byte fallback (no id is ever unknown for UTF-8 input), identity
// normalisation and whitespace kept as-is (so decode(encode(text)) == text exactly), "\n" as a
// piece of its own, and fixed special ids unk=0, bos=1, eos=2, pad=3.
#pragma once

#include <sentencepiece_processor.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "samout/data/corpus_file.h"

namespace samout::data {

struct TokenizerTrainConfig {
  int64_t vocab_size = 8192;
  int threads = 1;
  int64_t max_sentences = 4'000'000;  // SentencePiece samples at most this many lines
};

// Trains on `lines` (one sentence each, no "\n") and returns the serialized model. Throws
// UsageError with SentencePiece's reason when training fails (e.g. vocab_size too large).
std::string train_tokenizer(const std::vector<std::string>& lines, const TokenizerTrainConfig& cfg);

// A loaded model. Encode and decode are const and safe to call from several threads.
class Tokenizer {
 public:
  // `where` names the model's origin in error messages (a path).
  Tokenizer(const std::string& serialized_model, const std::string& where);
  static Tokenizer from_file(const std::string& path);

  void encode(std::string_view text, std::vector<int>* ids) const;
  std::string decode(const std::vector<int>& ids) const;
  // vocab, special ids and the serialized model, ready for the corpus files.
  const CorpusMeta& meta() const { return meta_; }

 private:
  sentencepiece::SentencePieceProcessor sp_;
  CorpusMeta meta_;
};

}  // namespace samout::data
