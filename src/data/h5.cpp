// HDF5 error and attribute helpers (see h5.h).
#include "samout/data/h5.h"

#include <regex>
#include <stdexcept>

#include "samout/common/error.h"

namespace samout::data {

void quiet_hdf5_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

void init_hdf5_for_main() {
  H5dont_atexit();  // fails, harmlessly, if the library was already in use
  quiet_hdf5_errors();
}

std::string hdf5_error() {
  // Called innermost error first (H5E_WALK_UPWARD): keeps the first one's description.
  auto keep_innermost = [](unsigned n, const H5E_error2_t* err, void* out) -> herr_t {
    auto* s = static_cast<std::string*>(out);
    if (n == 0 && err != nullptr) {
      if (err->desc != nullptr && err->desc[0] != '\0') {
        *s = err->desc;
      } else if (err->func_name != nullptr) {
        *s = std::string(err->func_name) + "() failed";
      }
    }
    return 0;
  };
  std::string desc;
  // H5Ewalk2 leaves the stack as it is (it does not clear it, unlike most API calls).
  if (H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, keep_innermost, &desc) < 0 || desc.empty())
    return "unknown HDF5 error";
  // A failed system call reads "..., errno = 28, error message = 'No space left on device', ...":
  // the quoted message is the reason.
  static const std::regex kSystemError("error message = '([^']*)'");
  std::smatch m;
  if (std::regex_search(desc, m, kSystemError)) desc = m.str(1);
  for (char& c : desc)
    if (c == '\n' || c == '\r') c = ' ';  // HDF5 embeds ctime() strings, which end in '\n'
  return desc;
}

namespace {
// The file an HDF5 object lives in, for messages ("" when HDF5 cannot say).
std::string file_name_of(hid_t obj) {
  char buf[4096];  // a longer name is cut, and still NUL-terminated
  return H5Fget_name(obj, buf, sizeof buf) > 0 ? std::string(buf) : std::string();
}

[[noreturn]] void write_failed(hid_t obj, const char* name) {
  const std::string reason = hdf5_error();  // before file_name_of clears the stack
  throw std::runtime_error(file_name_of(obj) + ": cannot write attribute '" + name +
                           "': " + reason);
}
[[noreturn]] void read_failed(hid_t obj, const char* name) {
  const std::string reason = hdf5_error();
  throw UsageError(file_name_of(obj) + ": cannot read attribute '" + name + "': " + reason);
}

// A variable-length string type; calls fail(obj, name) when HDF5 cannot make one.
H5Id vlen_string(H5T_cset_t cset, hid_t obj, const char* name, void (*fail)(hid_t, const char*)) {
  H5Id type(H5Tcopy(H5T_C_S1), H5Tclose);
  if (!type.valid() || H5Tset_size(type.get(), H5T_VARIABLE) < 0 ||
      H5Tset_cset(type.get(), cset) < 0)
    fail(obj, name);
  return type;
}

void write_attr(hid_t obj, const char* name, hid_t file_type, hid_t mem_type, const void* value) {
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
  if (!space.valid()) write_failed(obj, name);
  H5Id attr(H5Acreate2(obj, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.valid() || H5Awrite(attr.get(), mem_type, value) < 0) write_failed(obj, name);
}

// Opens attribute `name` of obj and its type; nullopt when there is none, or when it is not a
// single value of class `cls`.
std::optional<std::pair<H5Id, H5Id>> open_attr(hid_t obj, const char* name, H5T_class_t cls) {
  const htri_t exists = H5Aexists(obj, name);
  if (exists < 0) read_failed(obj, name);
  if (exists == 0) return std::nullopt;
  H5Id attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (!attr.valid()) read_failed(obj, name);
  H5Id type(H5Aget_type(attr.get()), H5Tclose);
  if (!type.valid()) read_failed(obj, name);
  H5Id space(H5Aget_space(attr.get()), H5Sclose);
  if (!space.valid()) read_failed(obj, name);
  if (H5Tget_class(type.get()) != cls || H5Sget_simple_extent_npoints(space.get()) != 1)
    return std::nullopt;  // another kind, or an array: not ours
  return std::make_pair(std::move(attr), std::move(type));
}
}  // namespace

void write_attr_int(hid_t obj, const char* name, int64_t value) {
  write_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void write_attr_str(hid_t obj, const char* name, const std::string& value) {
  H5Id type = vlen_string(H5T_CSET_UTF8, obj, name, write_failed);
  const char* p = value.c_str();
  write_attr(obj, name, type.get(), type.get(), &p);
}

std::optional<int64_t> read_attr_int(hid_t obj, const char* name) {
  auto at = open_attr(obj, name, H5T_INTEGER);
  if (!at) return std::nullopt;
  int64_t v = 0;
  if (H5Aread(at->first.get(), H5T_NATIVE_INT64, &v) < 0) read_failed(obj, name);
  return v;
}

std::optional<std::string> read_attr_str(hid_t obj, const char* name) {
  auto at = open_attr(obj, name, H5T_STRING);
  if (!at) return std::nullopt;
  const hid_t attr = at->first.get(), type = at->second.get();
  const htri_t variable = H5Tis_variable_str(type);
  if (variable < 0) read_failed(obj, name);
  if (variable > 0) {
    // In the file's cset: HDF5 will not convert ASCII <-> UTF-8.
    H5Id mem = vlen_string(H5Tget_cset(type), obj, name, read_failed);
    char* p = nullptr;
    if (H5Aread(attr, mem.get(), &p) < 0) read_failed(obj, name);
    std::string s(p ? p : "");
    H5free_memory(p);
    return s;
  }
  // Fixed-length strings, as other writers (numpy bytes) make them. A corrupt size is refused
  // rather than allocated.
  const size_t n = H5Tget_size(type);
  if (n == 0) read_failed(obj, name);
  if (n > (size_t{1} << 20))
    throw UsageError(file_name_of(obj) + ": attribute '" + name + "' claims a string of " +
                     std::to_string(n) + " bytes");
  std::string s(n, '\0');
  if (H5Aread(attr, type, s.data()) < 0) read_failed(obj, name);
  s.resize(std::min(s.find('\0'), n));
  return s;
}

std::string describe_type(hid_t type) {
  const size_t bits = 8 * H5Tget_size(type);
  switch (H5Tget_class(type)) {
    case H5T_INTEGER:
      return (H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits);
    case H5T_FLOAT:
      return "float" + std::to_string(bits);
    case H5T_STRING:
      return "string";
    case H5T_COMPOUND:
      return "compound";
    default:
      return "non-numeric type";
  }
}

}  // namespace samout::data
