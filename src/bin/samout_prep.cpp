// samout_prep: tokenizes text or JSONL files into HDF5 token shards (see data/README.md).
//   samout_prep --input='corpus/*.txt' --output=data/mine --vocab_size=8192
#include <gflags/gflags.h>

#include <cstdio>

#include "samout/common/error.h"
#include "samout/common/flags_check.h"
#include "samout/common/strings.h"
#include "samout/data/h5.h"
#include "samout/data/prep.h"

DEFINE_string(input, "", "Comma-separated input files or globs (more may follow as arguments)");
DEFINE_string(output, "", "Output directory: train-NNNNN.h5, val-NNNNN.h5, tokenizer.model");
DEFINE_int64(vocab_size, 8192, "Vocabulary size of the trained tokenizer");
DEFINE_string(tokenizer, "", "Reuse this SentencePiece .model instead of training one");
DEFINE_string(format, "auto", "Input format: auto (.jsonl/.json are JSONL), text or jsonl");
DEFINE_string(doc_separator, "%",
              "In text inputs, a line equal to this ends a document "
              "(\"\" = blank lines)");
DEFINE_string(jsonl_field, "text", "JSONL: the string field holding the document");
DEFINE_bool(strip_ansi, true, "Remove ANSI escape sequences (colour codes) from the text");
DEFINE_int64(shard_tokens, int64_t{1} << 27, "At most this many tokens per output file");
DEFINE_double(val_fraction, 0.01, "Share of documents held out in val-*.h5");
DEFINE_int32(compression, 0, "gzip level of the tokens dataset, 0-9 (0 = fastest reads)");
DEFINE_int64(chunk_tokens, int64_t{1} << 16, "HDF5 chunk length of the tokens dataset");
DEFINE_int32(threads, 0, "Encoding threads (0 = all cores)");
DEFINE_uint64(seed, 0, "Seed of the validation split and the tokenizer's training sample");
DEFINE_int64(tokenizer_train_mb, 256, "Megabytes of text sampled to train the tokenizer");
DEFINE_int32(progress, -1, "-1: bar on a terminal, lines otherwise; 0: lines; 1: bar");

namespace {
samout::data::PrepConfig config_from_flags(int argc, char** argv) {
  using samout::data::TextOptions;
  samout::data::PrepConfig c;
  for (auto& input : samout::split_list(FLAGS_input))
    if (!input.empty()) c.inputs.push_back(std::move(input));     // "a,,b" names two files
  for (int i = 1; i < argc; ++i) c.inputs.emplace_back(argv[i]);  // e.g. a shell-expanded glob
  c.output = FLAGS_output;
  c.train.vocab_size = FLAGS_vocab_size;
  c.tokenizer = FLAGS_tokenizer;
  samout::require(FLAGS_format == "auto" || FLAGS_format == "text" || FLAGS_format == "jsonl",
                  "--format must be auto, text or jsonl, got '" + FLAGS_format + "'");
  c.text.format = FLAGS_format == "text"    ? TextOptions::Format::kText
                  : FLAGS_format == "jsonl" ? TextOptions::Format::kJsonl
                                            : TextOptions::Format::kAuto;
  c.text.separator = FLAGS_doc_separator;
  c.text.jsonl_field = FLAGS_jsonl_field;
  c.text.strip_ansi = FLAGS_strip_ansi;
  c.shard_tokens = FLAGS_shard_tokens;
  c.val_fraction = FLAGS_val_fraction;
  c.write.compression = FLAGS_compression;
  c.write.chunk_tokens = FLAGS_chunk_tokens;
  c.threads = FLAGS_threads;
  c.seed = FLAGS_seed;
  c.tokenizer_train_bytes = FLAGS_tokenizer_train_mb << 20;
  c.progress = FLAGS_progress;
  return c;
}
}  // namespace

int main(int argc, char** argv) {
  samout::data::init_hdf5_for_main();  // before any HDF5 call: no stack printing, no exit handler
  samout::start_program("samout_prep", "samout_prep --input=FILES --output=DIR [--vocab_size=N]",
                        &argc, &argv);
  return samout::run_program("samout_prep", [&] {
    const auto r = samout::data::run_prep(config_from_flags(argc, argv));
    std::printf(
        "samout_prep: %.1f MB of text -> %s: train %ld docs %ld tokens, val %ld docs %ld "
        "tokens, vocab %ld; encoded at %.1f MB/s\n",
        r.input_bytes / 1e6, FLAGS_output.c_str(), static_cast<long>(r.train_docs),
        static_cast<long>(r.train_tokens), static_cast<long>(r.val_docs),
        static_cast<long>(r.val_tokens), static_cast<long>(r.vocab_size),
        r.input_bytes / 1e6 / std::max(1e-9, r.encode_seconds));
    return samout::kExitOk;
  });
}
