// Tokenized-corpus HDF5 files: writing and validated reading (see corpus_file.h).
#include "samout/data/corpus_file.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "samout/common/error.h"

namespace samout::data {

namespace {
constexpr int64_t kFlushTokens = int64_t{1} << 20;  // buffer this many tokens per H5Dwrite

H5Id create_1d(hid_t file, const char* name, hid_t file_type, int64_t n, int64_t chunk,
               bool extendible, int compression) {
  const hsize_t dims[1] = {static_cast<hsize_t>(n)};
  const hsize_t maxdims[1] = {extendible ? H5S_UNLIMITED : static_cast<hsize_t>(n)};
  H5Id space(H5Screate_simple(1, dims, maxdims), H5Sclose);
  H5Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  if (chunk > 0) {
    const hsize_t cdims[1] = {static_cast<hsize_t>(chunk)};
    H5Pset_chunk(dcpl.get(), 1, cdims);
    if (compression > 0) {
      H5Pset_shuffle(dcpl.get());  // byte-shuffling makes small ids compress far better
      H5Pset_deflate(dcpl.get(), static_cast<unsigned>(compression));
    }
  }
  H5Id ds(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
          H5Dclose);
  CHECK(ds.valid()) << "H5Dcreate2 " << name;
  return ds;
}

void write_all(hid_t ds, hid_t mem_type, const void* data) {
  CHECK_GE(H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0);
}
}  // namespace

// ---- Writer ----------------------------------------------------------------------------------

ShardWriter::ShardWriter(const std::string& path, const CorpusMeta& meta, const WriteOptions& opt)
    : path_(path), meta_(meta) {
  CHECK_GT(meta.vocab_size, 0);
  H5E_BEGIN_TRY {
    file_ = H5Id(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
  }
  H5E_END_TRY;
  if (!file_.valid()) throw std::runtime_error(path + ": cannot create HDF5 file");
  const bool narrow = token_bytes(meta.vocab_size) == 2;
  mem_type_ = H5T_NATIVE_UINT32;  // HDF5 narrows to the file's uint16 on write (ids < vocab)
  tokens_ = create_1d(file_.get(), "tokens", narrow ? H5T_STD_U16LE : H5T_STD_U32LE, 0,
                      std::max<int64_t>(1, opt.chunk_tokens), /*extendible=*/true, opt.compression);
  pending_.reserve(kFlushTokens);
}

ShardWriter::~ShardWriter() {
  if (file_.valid()) {
    try {
      close();
    } catch (const std::exception& e) {
      LOG(ERROR) << path_ << ": " << e.what();
    }
  }
}

void ShardWriter::begin_doc() { doc_offsets_.push_back(num_tokens()); }

void ShardWriter::append(const uint32_t* ids, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    CHECK_LT(ids[i], static_cast<uint64_t>(meta_.vocab_size));
    pending_.push_back(ids[i]);
    if (static_cast<int64_t>(pending_.size()) >= kFlushTokens) flush();
  }
}

void ShardWriter::flush() {
  if (pending_.empty()) return;
  const hsize_t start[1] = {static_cast<hsize_t>(written_)};
  const hsize_t count[1] = {pending_.size()};
  const hsize_t new_size[1] = {start[0] + count[0]};
  CHECK_GE(H5Dset_extent(tokens_.get(), new_size), 0);
  H5Id fspace(H5Dget_space(tokens_.get()), H5Sclose);
  H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr);
  H5Id mspace(H5Screate_simple(1, count, nullptr), H5Sclose);
  CHECK_GE(
      H5Dwrite(tokens_.get(), mem_type_, mspace.get(), fspace.get(), H5P_DEFAULT, pending_.data()),
      0)
      << path_;
  written_ += static_cast<int64_t>(pending_.size());
  pending_.clear();
}

void ShardWriter::close() {
  if (!file_.valid()) return;
  flush();
  tokens_.reset();
  const hid_t f = file_.get();
  std::vector<int64_t> offsets = doc_offsets_;
  offsets.push_back(written_);
  const int64_t chunk = std::min<int64_t>(offsets.size(), 1 << 16);
  H5Id off = create_1d(f, "doc_offsets", H5T_STD_I64LE, offsets.size(), chunk, false, 0);
  write_all(off.get(), H5T_NATIVE_INT64, offsets.data());
  const auto& model = meta_.tokenizer_model;
  H5Id tok = create_1d(f, "tokenizer", H5T_STD_U8LE, model.size(), 0, false, 0);
  if (!model.empty()) write_all(tok.get(), H5T_NATIVE_UINT8, model.data());
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
  off.reset();
  tok.reset();
  if (H5Fclose(file_.release()) < 0) throw std::runtime_error(path_ + ": error closing HDF5 file");
}

// ---- Reader ----------------------------------------------------------------------------------

ShardReader::ShardReader(const std::string& path) : path_(path) {
  const std::string& p = path;
  H5E_BEGIN_TRY {
    const htri_t is_h5 = H5Fis_hdf5(p.c_str());
    require(is_h5 >= 0 || access(p.c_str(), R_OK) == 0, p + ": cannot read file");
    require(is_h5 > 0, p + ": not an HDF5 file");
    file_ = H5Id(H5Fopen(p.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  }
  H5E_END_TRY;
  require(file_.valid(), p + ": cannot open HDF5 file");
  const hid_t f = file_.get();
  auto need_int = [&](const char* name) {
    auto v = read_attr_int(f, name);
    require(v.has_value(), p + ": missing integer attribute '" + name + "'");
    return *v;
  };
  const int64_t version = need_int("format_version");
  require(version >= 1 && version <= kFormatVersion,
          p + ": format_version " + std::to_string(version) + " not supported (this build reads " +
              std::to_string(kFormatVersion) + ")");
  meta_.vocab_size = need_int("vocab_size");
  require(meta_.vocab_size > 0, p + ": vocab_size must be positive");
  meta_.pad_id = read_attr_int(f, "pad_id").value_or(-1);
  meta_.bos_id = read_attr_int(f, "bos_id").value_or(-1);
  meta_.eos_id = read_attr_int(f, "eos_id").value_or(-1);
  meta_.unk_id = read_attr_int(f, "unk_id").value_or(-1);
  meta_.tokenizer_kind = read_attr_str(f, "tokenizer_kind").value_or("");

  auto open_ds = [&](const char* name) {
    require(H5Lexists(f, name, H5P_DEFAULT) > 0, p + ": missing dataset '" + name + "'");
    H5Id ds(H5Dopen2(f, name, H5P_DEFAULT), H5Dclose);
    require(ds.valid(), p + ": '" + name + "' is not a dataset");
    H5Id space(H5Dget_space(ds.get()), H5Sclose);
    require(H5Sget_simple_extent_ndims(space.get()) == 1,
            p + ": dataset '" + name + "' must be 1-D");
    return ds;
  };
  tokens_ = open_ds("tokens");
  {
    H5Id type(H5Dget_type(tokens_.get()), H5Tclose);
    const std::string got = describe_type(type.get());
    require(got == "uint16" || got == "uint32",
            p + ": dataset 'tokens' has dtype " + got + ", expected uint16 or uint32");
    elem_bytes_ = got == "uint16" ? 2 : 4;
    mem_type_ = elem_bytes_ == 2 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32;
  }
  {
    // Random windows are ~2 KB and chunks ~128 KB: through the chunk cache every window read
    // would pull in its whole chunk. Uncompressed chunks are read directly without a cache;
    // compressed ones must be inflated whole, so they keep one.
    H5Id dcpl(H5Dget_create_plist(tokens_.get()), H5Pclose);
    const bool filtered = H5Pget_nfilters(dcpl.get()) > 0;
    H5Id dapl(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose);
    H5Pset_chunk_cache(dapl.get(), filtered ? 521 : 0, filtered ? size_t{64} << 20 : 0, 1.0);
    tokens_ = H5Id(H5Dopen2(f, "tokens", dapl.get()), H5Dclose);
    H5Id type(H5Dget_type(tokens_.get()), H5Tclose);
    hsize_t chunk = 0;
    if (!filtered && H5Pget_layout(dcpl.get()) == H5D_CHUNKED &&
        H5Pget_chunk(dcpl.get(), 1, &chunk) == 1 &&
        H5Tequal(type.get(), elem_bytes_ == 2 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32) > 0) {
      fd_ = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd_ >= 0) chunk_tokens_ = static_cast<int64_t>(chunk);
    }
  }
  file_space_ = H5Id(H5Dget_space(tokens_.get()), H5Sclose);
  hsize_t n = 0;
  H5Sget_simple_extent_dims(file_space_.get(), &n, nullptr);
  num_tokens_ = static_cast<int64_t>(n);
  if (chunk_tokens_ > 0) chunk_addr_.assign((num_tokens_ + chunk_tokens_ - 1) / chunk_tokens_, 0);

  H5Id tok = open_ds("tokenizer");
  {
    H5Id type(H5Dget_type(tok.get()), H5Tclose);
    require(
        describe_type(type.get()) == "uint8",
        p + ": dataset 'tokenizer' has dtype " + describe_type(type.get()) + ", expected uint8");
    H5Id space(H5Dget_space(tok.get()), H5Sclose);
    hsize_t bytes = 0;
    H5Sget_simple_extent_dims(space.get(), &bytes, nullptr);
    meta_.tokenizer_model.resize(bytes);
    if (bytes > 0)
      CHECK_GE(H5Dread(tok.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                       meta_.tokenizer_model.data()),
               0);
  }
}

std::vector<int64_t> ShardReader::doc_offsets() const {
  const std::string& p = path_;
  require(H5Lexists(file_.get(), "doc_offsets", H5P_DEFAULT) > 0,
          p + ": missing dataset 'doc_offsets'");
  H5Id ds(H5Dopen2(file_.get(), "doc_offsets", H5P_DEFAULT), H5Dclose);
  H5Id space(H5Dget_space(ds.get()), H5Sclose);
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space.get(), &n, nullptr);
  std::vector<int64_t> out(n);
  if (n > 0)
    CHECK_GE(H5Dread(ds.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), 0);
  return out;
}

ShardReader::~ShardReader() {
  if (fd_ >= 0) ::close(fd_);
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
  H5Sselect_hyperslab(file_space_.get(), H5S_SELECT_SET, off, nullptr, cnt, nullptr);
  H5Id mspace(H5Screate_simple(1, cnt, nullptr), H5Sclose);
  if (H5Dread(tokens_.get(), mem_type_, mspace.get(), file_space_.get(), H5P_DEFAULT, dst) < 0)
    throw UsageError(path_ + ": cannot read token " + std::to_string(start) +
                     " (truncated or corrupt file)");
}

void ShardReader::read(int64_t start, int64_t n, int32_t* out) const {
  CHECK(start >= 0 && n >= 0 && start + n <= num_tokens_) << path_ << " [" << start << ", +" << n;
  if (n == 0) return;
  read_raw(start, n);
  // Widen and range-check in one pass; the max is branch-free so the loop vectorises.
  uint32_t top = 0;
  if (elem_bytes_ == 2) {
    const auto* src = reinterpret_cast<const uint16_t*>(buf_.data());
    for (int64_t i = 0; i < n; ++i) {
      out[i] = src[i];
      top = std::max<uint32_t>(top, src[i]);
    }
  } else {
    const uint32_t* src = buf_.data();
    for (int64_t i = 0; i < n; ++i) {
      out[i] = static_cast<int32_t>(src[i]);
      top = std::max(top, src[i]);
    }
  }
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
