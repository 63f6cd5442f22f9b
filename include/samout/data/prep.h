// samout_prep's library half: text/JSONL files -> SentencePiece tokenizer -> HDF5 token shards.
//
// Two passes over the inputs: the first trains the tokenizer (unless one is given) on a sample of
// training documents; the second encodes every document on `threads` workers and writes them in
// input order. Document d is held out for validation when hash(seed, d) < val_fraction, whatever
// the thread count. Output is written to a temporary directory and moved into place at the end.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "samout/data/corpus_file.h"
#include "samout/data/documents.h"
#include "samout/data/tokenizer.h"

namespace samout::data {

struct PrepConfig {
  std::vector<std::string> inputs;  // files or globs, read in this order
  std::string output;               // directory: train-NNNNN.h5, val-NNNNN.h5, tokenizer.model
  std::string tokenizer;            // an existing SentencePiece .model to reuse ("" = train one)
  TokenizerTrainConfig train;       // vocab_size and friends, when training
  int64_t tokenizer_train_bytes = int64_t{256} << 20;  // text sampled to train the tokenizer
  TextOptions text;
  int64_t shard_tokens = int64_t{1} << 27;  // tokens per output file, at most
  double val_fraction = 0.01;               // share of documents held out for validation
  WriteOptions write;
  int threads = 0;    // encoding workers; 0 = all cores
  uint64_t seed = 0;  // validation split and tokenizer sample
  int progress = -1;  // -1 auto (bar on a terminal, lines in a log), 0 lines, 1 bar
};

struct PrepResult {
  int64_t input_bytes = 0;
  int64_t train_docs = 0, train_tokens = 0, val_docs = 0, val_tokens = 0;
  int64_t vocab_size = 0;
  std::vector<std::string> files;  // written, relative to output
  double encode_seconds = 0;       // the second pass alone (reading, encoding, writing)
};

// Throws UsageError (naming the file) on bad input, having written nothing.
PrepResult run_prep(const PrepConfig& cfg);

}  // namespace samout::data
