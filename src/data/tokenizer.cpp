// SentencePiece training and encoding (see tokenizer.h).
#include "samout/data/tokenizer.h"

#include <sentencepiece_trainer.h>

#include <fstream>
#include <iterator>
#include <stdexcept>
#include <unordered_map>

#include "samout/common/error.h"

namespace samout::data {

namespace {
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string>& lines) : lines_(lines) {}
  bool done() const override { return i_ >= lines_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return lines_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& lines_;
  size_t i_ = 0;
};
}  // namespace

std::string train_tokenizer(const std::vector<std::string>& lines,
                            const TokenizerTrainConfig& cfg) {
  require(!lines.empty(), "no text to train the tokenizer on");
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(cfg.vocab_size)},
      {"hard_vocab_limit", "false"},  // a small corpus gets a smaller vocab, not an error
      {"byte_fallback", "true"},
      // Exact round trips: no NFKC (it would fold full-width CJK punctuation), keep whitespace.
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"split_digits", "true"},
      {"user_defined_symbols", "\n"},
      {"character_coverage", "0.9995"},  // rarer characters fall back to bytes
      {"input_sentence_size", std::to_string(cfg.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"max_sentence_length", "16384"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "3"},
      {"num_threads", std::to_string(std::max(1, cfg.threads))},
      {"minloglevel", "2"},  // SentencePiece's progress logging would drown ours
  };
  LineIterator it(lines);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &model);
  require(status.ok(), std::string("tokenizer training failed: ") + status.message());
  return model;
}

Tokenizer::Tokenizer(const std::string& serialized_model, const std::string& where) {
  const auto status = sp_.LoadFromSerializedProto(serialized_model);
  require(status.ok(), where + ": not a SentencePiece model (" + status.message() + ")");
  meta_.vocab_size = sp_.GetPieceSize();
  meta_.unk_id = sp_.unk_id();
  meta_.bos_id = sp_.bos_id();
  meta_.eos_id = sp_.eos_id();
  meta_.pad_id = sp_.pad_id();
  meta_.tokenizer_kind = "sentencepiece";
  meta_.tokenizer_model = serialized_model;
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), path + ": cannot open tokenizer model");
  return Tokenizer(std::string(std::istreambuf_iterator<char>(in), {}), path);
}

void Tokenizer::encode(std::string_view text, std::vector<int>* ids) const {
  const auto status = sp_.Encode(absl::string_view(text.data(), text.size()), ids);
  if (!status.ok()) throw std::runtime_error(std::string("tokenizer: ") + status.message());
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  std::string out;
  const auto status = sp_.Decode(ids, &out);  // fails on an id outside the model
  if (!status.ok()) throw UsageError(std::string("tokenizer: ") + status.message());
  return out;
}

}  // namespace samout::data
