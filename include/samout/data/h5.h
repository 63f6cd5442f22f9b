// RAII, error and attribute helpers over the HDF5 C API, shared by the corpus files and the
// checkpoint files. Debian's HDF5 is thread-safe; still, no handle is ever shared by two threads.
//
// HDF5 prints its whole error stack to stderr when a call fails, which breaks the one-line error
// contract (common/error.h). That setting and the stack are per thread, so every thread that calls
// HDF5 starts with quiet_hdf5_errors(), and failures are reported by our own exceptions ending in
// hdf5_error().
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
    reset();  // our old id is closed now, not when `o` goes (a self-move leaves no id)
    id_ = std::exchange(o.id_, -1);
    close_ = o.close_;
    return *this;
  }
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

// Turns off HDF5's error printing for the calling thread (the loader's prefetch thread, the
// checkpoint writer); main threads get it from init_hdf5_for_main().
void quiet_hdf5_errors();

// The first line of every main(): quiet_hdf5_errors(), and HDF5's exit handler off. That handler
// closes the files still open at exit, and HDF5 1.10 crashes in it (exit code 139) on a file whose
// last write failed (a full disk). We close every file we complete; one left open is abandoned.
void init_hdf5_for_main();

// HDF5's reason for the last failed call on this thread, on one line: the system's message for a
// failed system call ("No space left on device"), else the innermost description on the stack
// ("truncated file: eof = 2048, ..."). Call it at once: the next HDF5 call clears the stack.
std::string hdf5_error();

// Throws E(what + ": " + hdf5_error()): UsageError for a user's bad file, std::runtime_error for a
// failure of the environment (a full disk).
template <typename E>
[[noreturn]] void throw_hdf5(const std::string& what) {
  throw E(what + ": " + hdf5_error());
}

// Scalar attributes: integers stored as int64, strings as variable-length UTF-8 (what h5py reads
// as `str`). Writing throws std::runtime_error naming the file. Reading returns nullopt when the
// attribute is absent or of another kind, and throws UsageError naming the file when HDF5 fails.
void write_attr_int(hid_t obj, const char* name, int64_t value);
void write_attr_str(hid_t obj, const char* name, const std::string& value);
std::optional<int64_t> read_attr_int(hid_t obj, const char* name);
std::optional<std::string> read_attr_str(hid_t obj, const char* name);

// "uint16", "float64", "string"...: an HDF5 datatype named as a user would in an error message.
std::string describe_type(hid_t type);

}  // namespace samout::data
