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
//
// The reader checks every size a header claims against the file's size on disk before allocating
// for it (a flipped byte or a resize to 2^47 elements must not become a 22 GB allocation).
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

struct WriteOptions {
  int64_t chunk_tokens = int64_t{1} << 16;  // HDF5 chunk length of `tokens` (128 KiB at uint16)
  int compression = 0;                      // gzip level 0-9; 0 keeps random window reads cheapest
};

// Streams documents into one new file; close() finishes it, a writer destroyed unclosed abandons
// it. Not thread-safe. A failed write (a full disk) throws std::runtime_error naming the file and
// HDF5's reason, having closed HDF5's handles of the file (see close_abandoned).
class ShardWriter {
 public:
  ShardWriter(const std::string& path, const CorpusMeta& meta, const WriteOptions& opt);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  void begin_doc();                             // a document starts at the current token
  void append(const uint32_t* ids, int64_t n);  // ids < vocab_size (checked)
  int64_t num_tokens() const { return written_ + static_cast<int64_t>(pending_.size()); }
  void close();

 private:
  void flush();
  // Closes every handle (`dataset` too) without writing more, then throws "<path>: <what>: ...".
  [[noreturn]] void fail(const std::string& what, H5Id* dataset = nullptr);

  std::string path_;
  CorpusMeta meta_;
  H5Id file_, tokens_;
  std::vector<uint32_t> pending_;  // tokens not yet in the file
  std::vector<int64_t> doc_offsets_;
  int64_t written_ = 0;
};

// Opens one file, validates every promise of the format above, and reads token ranges. Each
// problem is a UsageError starting with the path; running out of file descriptors is named as that,
// with the limit. Whether SentencePiece loads the tokenizer is checked once per corpus, by the
// loader; token ids are checked as they are read. Keeps one descriptor open (HDF5's, shared by
// the direct chunk reads). Not thread-safe: one reader per thread.
class ShardReader {
 public:
  explicit ShardReader(const std::string& path);
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;
  const std::string& path() const { return path_; }
  const CorpusMeta& meta() const { return meta_; }
  int64_t num_tokens() const { return num_tokens_; }
  std::vector<int64_t> doc_offsets() const;

  // Reads tokens [start, start + n) into out; throws UsageError on a token >= vocab_size (a corrupt
  // file must never feed an out-of-range id to an embedding).
  void read(int64_t start, int64_t n, int32_t* out) const;
  // Scans the whole file, throwing like read() on an out-of-range token.
  void verify_tokens() const;

 private:
  // Reads raw stored tokens [start, start+n) into buf_, by pread on the chunks when possible.
  void read_raw(int64_t start, int64_t n) const;

  void check_doc_offsets(int64_t num_docs) const;

  std::string path_;
  CorpusMeta meta_;
  uint64_t file_size_ = 0;  // bytes on disk: the bound on every size the file claims
  H5Id file_, tokens_, file_space_;
  hid_t mem_type_;  // H5T_NATIVE_UINT16 or _UINT32, as stored
  int elem_bytes_ = 2;
  int64_t num_tokens_ = 0;
  mutable std::vector<uint32_t> buf_;  // raw tokens of the last read (uint16 packed when 2 bytes)
  // Uncompressed, chunked, native-endian tokens are pread() from the chunks' file addresses: an
  // H5Dread costs ~20 us, more than copying a 2 KB window. 8 bytes per chunk, looked up once.
  int fd_ = -1;               // HDF5's own descriptor of the file (not ours to close)
  int64_t chunk_tokens_ = 0;  // 0: no direct path, every read is an H5Dread
  mutable std::vector<uint64_t> chunk_addr_;  // 0 = not looked up yet
};

}  // namespace samout::data
