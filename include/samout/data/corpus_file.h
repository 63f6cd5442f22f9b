// The tokenized-corpus HDF5 file (format described in data/README.md): writer and reader.
//
// One file ("shard") holds:
//   tokens       (N,)     uint16 when vocab_size <= 65535, else uint32; chunked, optional gzip
//   doc_offsets  (D+1,)   int64; document d is tokens[doc_offsets[d] : doc_offsets[d+1]] and
//                         ends with eos (a document cut by the shard size limit continues as the
//                         first document of the next shard, and only its last piece ends in eos)
//   tokenizer    (B,)     uint8, the serialized SentencePiece ModelProto
// and root attributes format="samout-tokens", format_version, vocab_size, pad_id, bos_id, eos_id,
// unk_id, tokenizer_kind, num_tokens, num_docs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "samout/data/h5.h"

namespace samout::data {

constexpr const char* kFormatName = "samout-tokens";
constexpr int64_t kFormatVersion = 1;

// What every shard of one corpus shares.
struct CorpusMeta {
  int64_t vocab_size = 0;
  int64_t pad_id = -1, bos_id = -1, eos_id = -1, unk_id = -1;  // -1: the tokenizer has none
  std::string tokenizer_kind;                                  // e.g. "sentencepiece-bpe"
  std::string tokenizer_model;  // serialized model, the bytes of a SentencePiece .model file
};

// Bytes per stored token: 2 when every id fits uint16 (vocab_size <= 65535), else 4.
inline int token_bytes(int64_t vocab_size) { return vocab_size <= 65535 ? 2 : 4; }

struct WriteOptions {
  int64_t chunk_tokens = int64_t{1} << 16;  // HDF5 chunk length of `tokens` (128 KiB at uint16)
  int compression = 0;                      // gzip level 0-9; 0 keeps random window reads cheapest
};

// Streams documents into one new file. Not thread-safe; call close() to finish the file (the
// destructor closes too, but cannot report errors).
class ShardWriter {
 public:
  ShardWriter(const std::string& path, const CorpusMeta& meta, const WriteOptions& opt);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  void begin_doc();                             // a document starts at the current token
  void append(const uint32_t* ids, int64_t n);  // ids < vocab_size (CHECKed)
  int64_t num_tokens() const { return written_ + static_cast<int64_t>(pending_.size()); }
  void close();

 private:
  void flush();

  std::string path_;
  CorpusMeta meta_;
  H5Id file_, tokens_;
  hid_t mem_type_;
  std::vector<uint32_t> pending_;  // tokens not yet in the file
  std::vector<int64_t> doc_offsets_;
  int64_t written_ = 0;
};

// Opens one file, validates it, and reads token ranges. Every problem with the file is a
// UsageError whose message starts with the path. Not thread-safe: one reader per thread.
class ShardReader {
 public:
  explicit ShardReader(const std::string& path);
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;
  const std::string& path() const { return path_; }
  const CorpusMeta& meta() const { return meta_; }
  int64_t num_tokens() const { return num_tokens_; }
  std::vector<int64_t> doc_offsets() const;

  // Reads tokens [start, start + n) into out, widened to int32; throws UsageError when a token is
  // >= vocab_size (so a corrupt file can never feed an out-of-range id to an embedding).
  void read(int64_t start, int64_t n, int32_t* out) const;
  // Scans the whole file in large blocks, throwing like read() on an out-of-range token.
  void verify_tokens() const;
  ~ShardReader();

 private:
  // Reads raw stored tokens [start, start+n) into buf_, by pread on the chunks when possible.
  void read_raw(int64_t start, int64_t n) const;

  std::string path_;
  CorpusMeta meta_;
  H5Id file_, tokens_, file_space_;
  hid_t mem_type_;  // H5T_NATIVE_UINT16 or _UINT32, as stored
  int elem_bytes_ = 2;
  int64_t num_tokens_ = 0;
  mutable std::vector<uint32_t> buf_;  // raw tokens of the last read (uint16 packed when 2 bytes)
  // Direct path for uncompressed, chunked, native-endian tokens: HDF5 costs ~20 us a call, more
  // than copying a 2 KB window, so windows are pread() from the chunks' file addresses, looked
  // up once per chunk (8 bytes per chunk: 12 MB for 1e11 tokens in 64K-token chunks).
  int fd_ = -1;
  int64_t chunk_tokens_ = 0;                  // 0: no direct path, every read is an H5Dread
  mutable std::vector<uint64_t> chunk_addr_;  // 0 = not looked up yet
};

}  // namespace samout::data
