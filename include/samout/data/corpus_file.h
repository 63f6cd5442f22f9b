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
// The reader trusts nothing in a file before checking it: every size a file's header claims is
// checked against the file's size on disk before anything is allocated for it (a flipped byte or
// a dataset resized to 2^47 elements must not become a 22 GB allocation), and every promise of the
// format above is verified at open (see ShardReader).
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
// destructor of a writer that was not closed abandons the file unfinished: it only releases
// HDF5's handles). A failure to write (a full disk) throws
// std::runtime_error naming the file and HDF5's reason, having closed every HDF5 handle of the
// file: a file HDF5 still held open at exit would make its exit handler retry the write and crash.
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
  // Closes every handle (`dataset` too, when given) without writing more, then throws
  // runtime_error("<path>: <what>: <HDF5's reason>").
  [[noreturn]] void fail(const std::string& what, H5Id* dataset = nullptr);

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
//
// Checked at open, in this order: a regular file (a directory is named as one), HDF5, the
// `format` and `format_version` attributes; `tokens` 1-D uint16/uint32, its claimed size within
// the file's size and every chunk written (no fill-value holes), `vocab_size` in (0, 65535] for
// uint16 and (0, 2^31] for uint32, special ids in [-1, vocab_size), `tokenizer_kind`
// "sentencepiece", `num_tokens` == N; `doc_offsets` 1-D integers, within the file, D+1 ==
// num_docs+1, starting at 0, non-decreasing and ending at N (read in bounded blocks); `tokenizer`
// uint8 within the file. Whether SentencePiece loads the tokenizer is checked by open_corpus, once
// per corpus. Token ids are checked against vocab_size as they are read.
// Running out of file descriptors is reported as that, with the limit. A reader keeps one
// descriptor open (HDF5's, which the direct chunk reads share).
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

  void check_doc_offsets(int64_t num_docs) const;

  std::string path_;
  CorpusMeta meta_;
  uint64_t file_size_ = 0;  // bytes on disk: the bound on every size the file claims
  H5Id file_, tokens_, file_space_;
  hid_t mem_type_;  // H5T_NATIVE_UINT16 or _UINT32, as stored
  int elem_bytes_ = 2;
  int64_t num_tokens_ = 0;
  mutable std::vector<uint32_t> buf_;  // raw tokens of the last read (uint16 packed when 2 bytes)
  // Direct path for uncompressed, chunked, native-endian tokens: HDF5 costs ~20 us a call, more
  // than copying a 2 KB window, so windows are pread() from the chunks' file addresses, looked
  // up once per chunk (8 bytes per chunk: 12 MB for 1e11 tokens in 64K-token chunks).
  int fd_ = -1;               // HDF5's own descriptor of the file (not ours to close)
  int64_t chunk_tokens_ = 0;  // 0: no direct path, every read is an H5Dread
  mutable std::vector<uint64_t> chunk_addr_;  // 0 = not looked up yet
};

}  // namespace samout::data
