// Small RAII, error and attribute helpers over the HDF5 C API, shared by the corpus reader and
// writer and by the checkpoint files.
//
// The HDF5 library Debian ships is built thread-safe (H5_HAVE_THREADSAFE), so separate handles may
// be used from separate threads; one handle is still never used by two threads at once here.
//
// Errors. HDF5 prints its whole error stack (dozens of lines) to stderr whenever a call fails,
// unless told not to; that breaks the one-line error contract (common/error.h). Its error stack
// and that setting are per thread, so every thread that calls HDF5 starts with
// quiet_hdf5_errors(). A failed call is then reported by our own exception, whose message names
// the file and ends with hdf5_error(): HDF5's own reason, on one line.
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

// Turns off HDF5's automatic printing of its error stack for the calling thread. Every thread of
// ours that calls HDF5 (the loader's prefetch thread, the checkpoint writer) calls it at its
// start: HDF5 keeps the setting per thread. A program's main thread gets it from
// init_hdf5_for_main().
void quiet_hdf5_errors();

// The first line of every program's main(), before any other HDF5 call: quiet_hdf5_errors(), and
// HDF5's exit handler off (H5dont_atexit). That handler closes the files still open at exit; on
// a file whose last write failed (a full disk) HDF5 1.10 crashes in it (exit code 139, after our
// one-line message). Our code closes every file it completes, so a file still open at exit is one
// being abandoned after an error, with nothing worth flushing.
void init_hdf5_for_main();

// The reason HDF5 gave for the last failed call on this thread, on one line: the system's message
// when the failure was a system call ("No space left on device", "Too many open files"), else the
// innermost description on the error stack ("truncated file: eof = 2048, ..."). Call it right
// after the failed call: the next HDF5 call clears the stack.
std::string hdf5_error();

// Throws E(what + ": " + hdf5_error()). E is UsageError for a user's bad file, std::runtime_error
// for a failure of the environment (a full disk).
template <typename E>
[[noreturn]] void throw_hdf5(const std::string& what) {
  throw E(what + ": " + hdf5_error());
}

// The file an HDF5 object lives in, for messages ("" when HDF5 cannot say).
std::string file_name_of(hid_t obj);

// Attributes on a file or object. Integers are stored as int64, strings as variable-length UTF-8
// (what h5py reads back as `str`, with no decoding step in the reader's code). Writing throws
// std::runtime_error naming the file on failure. Reading returns nullopt when the attribute is
// absent or of another kind, and throws UsageError naming the file when HDF5 cannot read it.
void write_attr_int(hid_t obj, const char* name, int64_t value);
void write_attr_str(hid_t obj, const char* name, const std::string& value);
std::optional<int64_t> read_attr_int(hid_t obj, const char* name);
std::optional<std::string> read_attr_str(hid_t obj, const char* name);

// "uint16", "float64", "string"...: how a user would name an HDF5 datatype in an error message.
std::string describe_type(hid_t type);

}  // namespace samout::data
