// Tokenized-corpus HDF5 files: writing and validated reading (see corpus_file.h).
#include "samout/data/corpus_file.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "samout/common/error.h"

namespace samout::data {

namespace {
constexpr int64_t kFlushTokens = int64_t{1} << 20;  // buffer this many tokens per H5Dwrite

// A 1-D dataset; returns an invalid id when HDF5 fails (the caller reports hdf5_error()).
H5Id create_1d(hid_t file, const char* name, hid_t file_type, int64_t n, int64_t chunk,
               bool extendible, int compression) {
  const hsize_t dims[1] = {static_cast<hsize_t>(n)};
  const hsize_t maxdims[1] = {extendible ? H5S_UNLIMITED : static_cast<hsize_t>(n)};
  H5Id space(H5Screate_simple(1, dims, maxdims), H5Sclose);
  H5Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  if (!space.valid() || !dcpl.valid()) return H5Id();
  if (chunk > 0) {
    const hsize_t cdims[1] = {static_cast<hsize_t>(chunk)};
    if (H5Pset_chunk(dcpl.get(), 1, cdims) < 0) return H5Id();
    // byte-shuffling makes small ids compress far better
    if (compression > 0 && (H5Pset_shuffle(dcpl.get()) < 0 ||
                            H5Pset_deflate(dcpl.get(), static_cast<unsigned>(compression)) < 0))
      return H5Id();
  }
  return H5Id(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
              H5Dclose);
}

// Closes a file being abandoned (its objects closed already), errors ignored. HDF5 1.10 writes its
// cached metadata on close; if that fails (a full disk) the id is left pointing at freed memory and
// HDF5's exit handler crashes on it, while a failed H5Fflush leaves the file intact (but can never
// be retried). So the contents are truncated away to make room, then flushed, and only a flushed
// file is closed; one that is not stays open, harmless once init_hdf5_for_main() ran.
void close_abandoned(hid_t f) {
  if (f < 0) return;
  int* fd = nullptr;
  if (H5Fget_vfd_handle(f, H5P_DEFAULT, reinterpret_cast<void**>(&fd)) >= 0 && fd != nullptr)
    (void)::ftruncate(*fd, 0);  // if this fails, the flush may still fit
  if (H5Fflush(f, H5F_SCOPE_LOCAL) >= 0) H5Fclose(f);
}
}  // namespace

// ---- Writer ----------------------------------------------------------------------------------

ShardWriter::ShardWriter(const std::string& path, const CorpusMeta& meta, const WriteOptions& opt)
    : path_(path), meta_(meta) {
  require(meta.vocab_size > 0 && meta.vocab_size <= (int64_t{1} << 31),
          path + ": vocab_size " + std::to_string(meta.vocab_size) + " is outside [1, 2^31]");
  require(opt.chunk_tokens > 0, path + ": chunk_tokens must be positive");
  file_ = H5Id(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
  if (!file_.valid()) throw_hdf5<std::runtime_error>(path + ": cannot create HDF5 file");
  const bool narrow = meta.vocab_size <= 65535;  // every id fits uint16
  tokens_ = create_1d(file_.get(), "tokens", narrow ? H5T_STD_U16LE : H5T_STD_U32LE, 0,
                      opt.chunk_tokens, /*extendible=*/true, opt.compression);
  if (!tokens_.valid()) fail("cannot create dataset 'tokens'");
  pending_.reserve(kFlushTokens);
}

ShardWriter::~ShardWriter() {
  // Not closed: an error is unwinding and the file will be removed. Write nothing more (on a full
  // disk that would fail and report again).
  tokens_.reset();
  close_abandoned(file_.release());
}

void ShardWriter::fail(const std::string& what, H5Id* dataset) {
  const std::string reason = hdf5_error();  // before the closes below clear HDF5's error stack
  // Every object of the file first, then the file itself (see close_abandoned).
  if (dataset != nullptr) dataset->reset();
  tokens_.reset();
  pending_.clear();
  close_abandoned(file_.release());
  throw std::runtime_error(path_ + ": " + what + ": " + reason);
}

void ShardWriter::begin_doc() { doc_offsets_.push_back(num_tokens()); }

void ShardWriter::append(const uint32_t* ids, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] >= static_cast<uint64_t>(meta_.vocab_size))
      throw std::runtime_error(path_ + ": token id " + std::to_string(ids[i]) +
                               " is >= vocab_size " + std::to_string(meta_.vocab_size));
    pending_.push_back(ids[i]);
    if (static_cast<int64_t>(pending_.size()) >= kFlushTokens) flush();
  }
}

void ShardWriter::flush() {
  if (pending_.empty()) return;
  const hsize_t start[1] = {static_cast<hsize_t>(written_)};
  const hsize_t count[1] = {pending_.size()};
  const hsize_t new_size[1] = {start[0] + count[0]};
  if (H5Dset_extent(tokens_.get(), new_size) < 0) fail("cannot extend dataset 'tokens'");
  H5Id fspace(H5Dget_space(tokens_.get()), H5Sclose);
  if (!fspace.valid() ||
      H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) < 0)
    fail("cannot select tokens to write");
  H5Id mspace(H5Screate_simple(1, count, nullptr), H5Sclose);
  // HDF5 narrows to the file's uint16 when vocab_size allows (ids < vocab_size)
  if (!mspace.valid() || H5Dwrite(tokens_.get(), H5T_NATIVE_UINT32, mspace.get(), fspace.get(),
                                  H5P_DEFAULT, pending_.data()) < 0)
    fail("cannot write tokens");
  written_ += static_cast<int64_t>(pending_.size());
  pending_.clear();
}

void ShardWriter::close() {
  if (!file_.valid()) return;
  flush();
  tokens_.reset();
  const hid_t f = file_.get();
  auto write_1d = [&](const char* name, hid_t file_type, hid_t mem_type, size_t n, int64_t chunk,
                      const void* data) {
    H5Id ds = create_1d(f, name, file_type, n, chunk, /*extendible=*/false, 0);
    if (!ds.valid() ||
        (n > 0 && H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0))
      fail(std::string("cannot write dataset '") + name + "'", &ds);
  };
  std::vector<int64_t> offsets = doc_offsets_;
  offsets.push_back(written_);
  write_1d("doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, offsets.size(),
           std::min<int64_t>(offsets.size(), 1 << 16), offsets.data());
  const std::string& model = meta_.tokenizer_model;
  write_1d("tokenizer", H5T_STD_U8LE, H5T_NATIVE_UINT8, model.size(), 0, model.data());
  try {
    write_attr_str(f, "format", kFormatName);
    write_attr_int(f, "format_version", kFormatVersion);
    write_attr_int(f, "vocab_size", meta_.vocab_size);
    write_attr_int(f, "pad_id", meta_.pad_id);
    write_attr_int(f, "bos_id", meta_.bos_id);
    write_attr_int(f, "eos_id", meta_.eos_id);
    write_attr_int(f, "unk_id", meta_.unk_id);
    write_attr_str(f, "tokenizer_kind", meta_.tokenizer_kind);
    write_attr_int(f, "num_tokens", written_);
    write_attr_int(f, "num_docs", static_cast<int64_t>(doc_offsets_.size()));
  } catch (const std::runtime_error&) {
    close_abandoned(file_.release());  // the attribute writer has named the file and the reason
    throw;
  }
  // Flushed before it is closed, so that a failure leaves a file HDF5 can still hold (it stays
  // open: see close_abandoned).
  if (H5Fflush(f, H5F_SCOPE_LOCAL) < 0) {
    file_.release();
    throw_hdf5<std::runtime_error>(path_ + ": cannot finish HDF5 file");
  }
  if (H5Fclose(file_.release()) < 0)
    throw_hdf5<std::runtime_error>(path_ + ": cannot close HDF5 file");
}

// ---- Reader ----------------------------------------------------------------------------------

namespace {
// deflate, the only compressing filter HDF5 ships built in, never inflates data more than 1032x:
// the bound on what a compressed dataset's stored bytes can claim to hold.
constexpr uint64_t kMaxInflate = 1032;
constexpr int64_t kOffsetsBlock = int64_t{1} << 20;  // doc_offsets are checked in blocks of 8 MB

// At most 60 characters of a string from a file, control characters shown as '?'.
std::string printable(const std::string& s) {
  std::string out = s.substr(0, 60);
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return s.size() > 60 ? out + "..." : out;
}

// The reason an open failed. Out of file descriptors is named, with the limit: HDF5 would only say
// that it cannot open the file, as if the file were at fault.
[[noreturn]] void open_failed(const std::string& p, const std::string& what) {
  const std::string reason = hdf5_error();
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const int err = errno;
  if (fd >= 0) ::close(fd);
  if (fd < 0 && (err == EMFILE || err == ENFILE)) {
    struct rlimit lim {};
    ::getrlimit(RLIMIT_NOFILE, &lim);
    const auto str = [](rlim_t v) {
      return v == RLIM_INFINITY ? std::string("unlimited") : std::to_string(v);
    };
    throw UsageError(p + ": " + what + ": too many open files (" +
                     (err == ENFILE ? std::string("the system's table of open files is full")
                                    : "the limit is " + str(lim.rlim_cur) + ", hard limit " +
                                          str(lim.rlim_max)) +
                     "; every shard keeps one open): raise it with `ulimit -n` or merge shards "
                     "into fewer, larger files");
  }
  throw UsageError(p + ": " + what + ": " + reason);
}

// Opens a 1-D dataset.
H5Id open_1d(hid_t f, const std::string& p, const char* name, hid_t dapl = H5P_DEFAULT) {
  const htri_t exists = H5Lexists(f, name, H5P_DEFAULT);
  if (exists < 0) throw_hdf5<UsageError>(p + ": cannot look up '" + name + "'");
  require(exists > 0, p + ": missing dataset '" + name + "'");
  H5Id ds(H5Dopen2(f, name, dapl), H5Dclose);
  if (!ds.valid()) throw_hdf5<UsageError>(p + ": cannot open '" + name + "' as a dataset");
  H5Id space(H5Dget_space(ds.get()), H5Sclose);
  if (!space.valid()) throw_hdf5<UsageError>(p + ": cannot read the shape of '" + name + "'");
  require(H5Sget_simple_extent_ndims(space.get()) == 1, p + ": dataset '" + name + "' must be 1-D");
  return ds;
}

H5Id dtype_of(hid_t ds, const std::string& p, const char* name) {
  H5Id type(H5Dget_type(ds), H5Tclose);
  if (!type.valid()) throw_hdf5<UsageError>(p + ": cannot read the dtype of '" + name + "'");
  return type;
}

// The length of 1-D dataset `ds` of `elem`-byte elements, checked against a file of `file_size`
// bytes. Uncompressed, the claimed bytes must fit in the file and be stored (HDF5 serves fill
// values for unwritten chunks, and a resize to 2^47 costs a file nothing). Compressed, every chunk
// must be stored and the claim within what deflate can inflate the file to. A chunk must fit too
// (HDF5 allocates a whole chunk to read from it).
int64_t checked_length(hid_t ds, const std::string& p, const char* name, uint64_t elem,
                       uint64_t file_size) {
  H5Id space(H5Dget_space(ds), H5Sclose);
  hsize_t n = 0;
  if (!space.valid() || H5Sget_simple_extent_dims(space.get(), &n, nullptr) != 1)
    throw_hdf5<UsageError>(p + ": cannot read the shape of '" + name + "'");
  if (n == 0) return 0;
  H5Id dcpl(H5Dget_create_plist(ds), H5Pclose);
  if (!dcpl.valid()) throw_hdf5<UsageError>(p + ": cannot read the layout of '" + name + "'");
  const int filters = H5Pget_nfilters(dcpl.get());
  const H5D_layout_t layout = H5Pget_layout(dcpl.get());
  if (filters < 0 || layout < 0)
    throw_hdf5<UsageError>(p + ": cannot read the layout of '" + name + "'");
  const uint64_t limit = file_size * (filters > 0 ? kMaxInflate : 1);
  const std::string claims = p + ": dataset '" + name + "' claims " + std::to_string(n) +
                             " elements (" + std::to_string(n) + " x " + std::to_string(elem) +
                             " bytes)";
  require(n <= limit / elem, claims + " but the file is only " + std::to_string(file_size) +
                                 " bytes: corrupt header or truncated file");
  const uint64_t bytes = n * elem;
  if (layout == H5D_CHUNKED) {
    hsize_t chunk = 0;
    if (H5Pget_chunk(dcpl.get(), 1, &chunk) != 1)
      throw_hdf5<UsageError>(p + ": cannot read the chunk size of '" + name + "'");
    require(chunk > 0 && chunk <= limit / elem,
            p + ": dataset '" + name + "' has chunks of " + std::to_string(chunk) +
                " elements, more than the file of " + std::to_string(file_size) +
                " bytes can hold: corrupt header");
    if (filters > 0) {
      hsize_t stored = 0;
      if (H5Dget_num_chunks(ds, space.get(), &stored) < 0)
        throw_hdf5<UsageError>(p + ": cannot count the chunks of '" + name + "'");
      const hsize_t expected = (n + chunk - 1) / chunk;
      require(stored == expected, p + ": dataset '" + name + "' claims " + std::to_string(n) +
                                      " elements but stores " + std::to_string(stored) + " of " +
                                      std::to_string(expected) +
                                      " chunks: unwritten chunks (resized or incomplete file)");
      return static_cast<int64_t>(n);
    }
  }
  // Uncompressed: every byte claimed is stored. (For chunks, storage is whole chunks.)
  const hsize_t stored = H5Dget_storage_size(ds);
  require(stored >= bytes, claims + " but stores only " + std::to_string(stored) +
                               " bytes: unwritten chunks (resized or incomplete file)");
  return static_cast<int64_t>(n);
}
}  // namespace

ShardReader::ShardReader(const std::string& path) : path_(path) {
  const std::string& p = path;
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) {
    const int err = errno;
    require(err != ENOENT, p + ": no such file");
    throw UsageError(p + ": cannot read file: " + std::strerror(err));
  }
  require(!S_ISDIR(st.st_mode),
          p + ": is a directory, not a corpus file (give its shards, e.g. " + p + "/train-*.h5)");
  require(S_ISREG(st.st_mode), p + ": not a regular file");
  file_size_ = static_cast<uint64_t>(st.st_size);
  const htri_t is_h5 = H5Fis_hdf5(p.c_str());
  if (is_h5 < 0) open_failed(p, "cannot read file");
  require(is_h5 > 0, p + ": not an HDF5 file");
  file_ = H5Id(H5Fopen(p.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file_.valid()) open_failed(p, "cannot open HDF5 file");
  const hid_t f = file_.get();

  const auto format = read_attr_str(f, "format");
  require(format.has_value(),
          p + ": no string attribute 'format': not a " + std::string(kFormatName) + " corpus file");
  require(*format == kFormatName,
          p + ": format is '" + printable(*format) + "', expected '" + kFormatName + "'");
  auto need_int = [&](const char* name) {
    auto v = read_attr_int(f, name);
    require(v.has_value(), p + ": missing integer attribute '" + name + "'");
    return *v;
  };
  const int64_t version = need_int("format_version");
  require(version >= 1 && version <= kFormatVersion,
          p + ": format_version " + std::to_string(version) + " not supported (this build reads " +
              std::to_string(kFormatVersion) + ")");

  // ---- tokens: dtype, then its size against the file, then vocab_size against the dtype
  {
    H5Id ds = open_1d(f, p, "tokens");
    const H5Id type = dtype_of(ds.get(), p, "tokens");
    const std::string got = describe_type(type.get());
    require(got == "uint16" || got == "uint32",
            p + ": dataset 'tokens' has dtype " + got + ", expected uint16 or uint32");
    elem_bytes_ = got == "uint16" ? 2 : 4;
    mem_type_ = elem_bytes_ == 2 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32;
    num_tokens_ = checked_length(ds.get(), p, "tokens", elem_bytes_, file_size_);

    // Random windows are ~2 KB and chunks ~128 KB: through the chunk cache every window read
    // would pull in its whole chunk. Uncompressed chunks are read directly without a cache;
    // compressed ones must be inflated whole, so they keep one.
    H5Id dcpl(H5Dget_create_plist(ds.get()), H5Pclose);
    if (!dcpl.valid()) throw_hdf5<UsageError>(p + ": cannot read the layout of 'tokens'");
    const bool filtered = H5Pget_nfilters(dcpl.get()) > 0;
    H5Id dapl(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose);
    if (!dapl.valid() || H5Pset_chunk_cache(dapl.get(), filtered ? 521 : 0,
                                            filtered ? size_t{64} << 20 : 0, 1.0) < 0)
      throw_hdf5<UsageError>(p + ": cannot set up reading 'tokens'");
    ds.reset();  // HDF5 ignores the dapl of a dataset that is already open
    tokens_ = open_1d(f, p, "tokens", dapl.get());
    hsize_t chunk = 0;
    int* vfd = nullptr;
    H5Id fapl(H5Fget_access_plist(f), H5Pclose);
    if (!filtered && H5Pget_layout(dcpl.get()) == H5D_CHUNKED &&
        H5Pget_chunk(dcpl.get(), 1, &chunk) == 1 && H5Tequal(type.get(), mem_type_) > 0 &&
        fapl.valid() && H5Pget_driver(fapl.get()) == H5FD_SEC2 &&
        H5Fget_vfd_handle(f, H5P_DEFAULT, reinterpret_cast<void**>(&vfd)) >= 0 && vfd != nullptr) {
      fd_ = *vfd;  // HDF5's sec2 descriptor: pread() needs no file offset of its own
      chunk_tokens_ = static_cast<int64_t>(chunk);
    }
  }
  meta_.vocab_size = need_int("vocab_size");
  const int64_t max_vocab = elem_bytes_ == 2 ? 65535 : int64_t{1} << 31;
  require(meta_.vocab_size > 0 && meta_.vocab_size <= max_vocab,
          p + ": vocab_size " + std::to_string(meta_.vocab_size) + " is outside [1, " +
              std::to_string(max_vocab) + "] for uint" + std::to_string(8 * elem_bytes_) +
              " tokens");
  auto special = [&](const char* name) {
    const int64_t id = read_attr_int(f, name).value_or(-1);
    require(id >= -1 && id < meta_.vocab_size, p + ": " + name + " " + std::to_string(id) +
                                                   " is outside [-1, vocab_size " +
                                                   std::to_string(meta_.vocab_size) + ")");
    return id;
  };
  meta_.pad_id = special("pad_id");
  meta_.bos_id = special("bos_id");
  meta_.eos_id = special("eos_id");
  meta_.unk_id = special("unk_id");
  meta_.tokenizer_kind = read_attr_str(f, "tokenizer_kind").value_or("");
  require(meta_.tokenizer_kind == "sentencepiece", p + ": tokenizer_kind is '" +
                                                       printable(meta_.tokenizer_kind) +
                                                       "', expected 'sentencepiece'");
  const int64_t claimed_tokens = need_int("num_tokens");
  require(claimed_tokens == num_tokens_,
          p + ": attribute num_tokens " + std::to_string(claimed_tokens) + " disagrees with the " +
              std::to_string(num_tokens_) + " tokens stored");
  check_doc_offsets(need_int("num_docs"));

  file_space_ = H5Id(H5Dget_space(tokens_.get()), H5Sclose);
  if (!file_space_.valid()) throw_hdf5<UsageError>(p + ": cannot read the shape of 'tokens'");
  // At most one entry per stored chunk, and checked_length has seen every chunk stored.
  if (chunk_tokens_ > 0) chunk_addr_.assign((num_tokens_ + chunk_tokens_ - 1) / chunk_tokens_, 0);

  H5Id tok = open_1d(f, p, "tokenizer");
  const std::string tok_type = describe_type(dtype_of(tok.get(), p, "tokenizer").get());
  require(tok_type == "uint8",
          p + ": dataset 'tokenizer' has dtype " + tok_type + ", expected uint8");
  const int64_t bytes = checked_length(tok.get(), p, "tokenizer", 1, file_size_);
  meta_.tokenizer_model.resize(static_cast<size_t>(bytes));
  if (bytes > 0 && H5Dread(tok.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                           meta_.tokenizer_model.data()) < 0)
    throw_hdf5<UsageError>(p + ": cannot read dataset 'tokenizer'");
}

void ShardReader::check_doc_offsets(int64_t num_docs) const {
  const std::string& p = path_;
  H5Id ds = open_1d(file_.get(), p, "doc_offsets");
  const H5Id type = dtype_of(ds.get(), p, "doc_offsets");
  require(
      H5Tget_class(type.get()) == H5T_INTEGER,
      p + ": dataset 'doc_offsets' has dtype " + describe_type(type.get()) + ", expected int64");
  const int64_t n = checked_length(ds.get(), p, "doc_offsets", H5Tget_size(type.get()), file_size_);
  require(num_docs >= 0 && n == num_docs + 1,
          p + ": dataset 'doc_offsets' holds " + std::to_string(n) +
              " offsets, but attribute num_docs " + std::to_string(num_docs) + " needs " +
              (num_docs >= 0 ? std::to_string(num_docs + 1) : std::string("num_docs + 1")));
  H5Id fspace(H5Dget_space(ds.get()), H5Sclose);
  if (!fspace.valid()) throw_hdf5<UsageError>(p + ": cannot read the shape of 'doc_offsets'");
  std::vector<int64_t> block(static_cast<size_t>(std::min(kOffsetsBlock, n)));
  int64_t prev = 0;
  for (int64_t s = 0; s < n; s += kOffsetsBlock) {
    const hsize_t off[1] = {static_cast<hsize_t>(s)};
    const hsize_t cnt[1] = {static_cast<hsize_t>(std::min(kOffsetsBlock, n - s))};
    H5Id mspace(H5Screate_simple(1, cnt, nullptr), H5Sclose);
    if (!mspace.valid() ||
        H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, off, nullptr, cnt, nullptr) < 0 ||
        H5Dread(ds.get(), H5T_NATIVE_INT64, mspace.get(), fspace.get(), H5P_DEFAULT, block.data()) <
            0)
      throw_hdf5<UsageError>(p + ": cannot read dataset 'doc_offsets'");
    for (hsize_t i = 0; i < cnt[0]; ++i) {
      const int64_t v = block[i], d = s + static_cast<int64_t>(i);
      require(d > 0 || v == 0, p + ": doc_offsets[0] is " + std::to_string(v) + ", expected 0");
      require(v >= prev, p + ": doc_offsets decrease at document " + std::to_string(d) + " (" +
                             std::to_string(prev) + " then " + std::to_string(v) + ")");
      prev = v;
    }
  }
  require(prev == num_tokens_, p + ": doc_offsets end at " + std::to_string(prev) +
                                   ", expected the " + std::to_string(num_tokens_) +
                                   " tokens stored");
}

std::vector<int64_t> ShardReader::doc_offsets() const {
  // Checked at open: present, integers, its length within what the file holds.
  H5Id ds = open_1d(file_.get(), path_, "doc_offsets");
  H5Id space(H5Dget_space(ds.get()), H5Sclose);
  hsize_t n = 0;
  if (!space.valid() || H5Sget_simple_extent_dims(space.get(), &n, nullptr) != 1)
    throw_hdf5<UsageError>(path_ + ": cannot read the shape of 'doc_offsets'");
  std::vector<int64_t> out(n);
  if (n > 0 && H5Dread(ds.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
    throw_hdf5<UsageError>(path_ + ": cannot read dataset 'doc_offsets'");
  return out;
}

void ShardReader::read_raw(int64_t start, int64_t n) const {
  buf_.resize((n * elem_bytes_ + 3) / 4);
  auto* dst = reinterpret_cast<char*>(buf_.data());
  if (chunk_tokens_ > 0) {
    bool direct = true;
    for (int64_t pos = start; direct && pos < start + n;) {
      const int64_t c = pos / chunk_tokens_, in_chunk = pos - c * chunk_tokens_;
      const int64_t take = std::min(start + n - pos, chunk_tokens_ - in_chunk);
      if (chunk_addr_[c] == 0) {
        const hsize_t coord[1] = {static_cast<hsize_t>(c * chunk_tokens_)};
        unsigned mask = 0;
        haddr_t addr = HADDR_UNDEF;
        hsize_t size = 0;
        herr_t rc = -1;
        H5E_BEGIN_TRY {
          rc = H5Dget_chunk_info_by_coord(tokens_.get(), coord, &mask, &addr, &size);
        }
        H5E_END_TRY;
        if (rc < 0 || addr == HADDR_UNDEF) {
          direct = false;  // unallocated chunk (fill values): let HDF5 produce it
          break;
        }
        chunk_addr_[c] = addr;
      }
      const size_t bytes = static_cast<size_t>(take) * elem_bytes_;
      const off_t at = static_cast<off_t>(chunk_addr_[c] + in_chunk * elem_bytes_);
      if (::pread(fd_, dst + (pos - start) * elem_bytes_, bytes, at) != static_cast<ssize_t>(bytes))
        throw UsageError(path_ + ": cannot read token " + std::to_string(pos) +
                         " (truncated or corrupt file)");
      pos += take;
    }
    if (direct) return;
  }
  const hsize_t off[1] = {static_cast<hsize_t>(start)}, cnt[1] = {static_cast<hsize_t>(n)};
  H5Id mspace(H5Screate_simple(1, cnt, nullptr), H5Sclose);
  if (!mspace.valid() ||
      H5Sselect_hyperslab(file_space_.get(), H5S_SELECT_SET, off, nullptr, cnt, nullptr) < 0 ||
      H5Dread(tokens_.get(), mem_type_, mspace.get(), file_space_.get(), H5P_DEFAULT, dst) < 0)
    throw_hdf5<UsageError>(path_ + ": cannot read token " + std::to_string(start) +
                           " (truncated or corrupt file)");
}

void ShardReader::read(int64_t start, int64_t n, int32_t* out) const {
  CHECK(start >= 0 && n >= 0 && start + n <= num_tokens_) << path_ << " [" << start << ", +" << n;
  if (n == 0) return;
  read_raw(start, n);
  // Widen and range-check in one pass; the max is branch-free so the loop vectorises.
  auto widen = [&](const auto* src) {
    uint32_t top = 0;
    for (int64_t i = 0; i < n; ++i) {
      out[i] = static_cast<int32_t>(src[i]);
      top = std::max<uint32_t>(top, src[i]);
    }
    return top;
  };
  const uint32_t top =
      elem_bytes_ == 2 ? widen(reinterpret_cast<const uint16_t*>(buf_.data())) : widen(buf_.data());
  if (static_cast<int64_t>(top) >= meta_.vocab_size) {
    int64_t at = 0;
    while (at < n && static_cast<int64_t>(static_cast<uint32_t>(out[at])) < meta_.vocab_size) ++at;
    require(false, path_ + ": token id " + std::to_string(static_cast<uint32_t>(out[at])) +
                       " at position " + std::to_string(start + at) + " is >= vocab_size " +
                       std::to_string(meta_.vocab_size));
  }
}

void ShardReader::verify_tokens() const {
  constexpr int64_t kBlock = int64_t{1} << 22;
  std::vector<int32_t> block(std::min(kBlock, num_tokens_));
  for (int64_t s = 0; s < num_tokens_; s += kBlock)
    read(s, std::min(kBlock, num_tokens_ - s), block.data());
}

}  // namespace samout::data
