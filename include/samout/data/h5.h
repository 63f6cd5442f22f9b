// Small RAII and attribute helpers over the HDF5 C API, shared by the corpus reader and writer.
//
// The HDF5 library Debian ships is built thread-safe (H5_HAVE_THREADSAFE), so separate handles may
// be used from separate threads; one handle is still never used by two threads at once here.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

namespace samout::data {

// Owns one hid_t and closes it with the matching H5?close. A negative id means "none".
class H5Id {
 public:
  using Closer = herr_t (*)(hid_t);
  H5Id() = default;
  H5Id(hid_t id, Closer close) : id_(id), close_(close) {}
  H5Id(H5Id&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  H5Id& operator=(H5Id&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, -1);
      close_ = o.close_;
    }
    return *this;
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  ~H5Id() { reset(); }

  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = -1;
  }
  hid_t release() { return std::exchange(id_, -1); }  // the caller closes it now
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_ = -1;
  Closer close_ = nullptr;
};

// Attributes on a file or object. Integers are stored as int64, strings as variable-length UTF-8
// (what h5py reads back as `str`, with no decoding step in the reader's code).
void write_attr_int(hid_t obj, const char* name, int64_t value);
void write_attr_str(hid_t obj, const char* name, const std::string& value);
std::optional<int64_t> read_attr_int(hid_t obj, const char* name);
std::optional<std::string> read_attr_str(hid_t obj, const char* name);

// "uint16", "float64", "string"...: how a user would name an HDF5 datatype in an error message.
std::string describe_type(hid_t type);

}  // namespace samout::data
