// HDF5 error and attribute helpers (see h5.h).
#include "samout/data/h5.h"

#include <stdexcept>

#include "samout/common/error.h"

namespace samout::data {

void quiet_hdf5_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

void init_hdf5_for_main() {
  H5dont_atexit();  // fails, harmlessly, if the library was already in use
  quiet_hdf5_errors();
}

namespace {
// Called innermost error first (H5E_WALK_UPWARD): keeps the first one's description.
herr_t keep_innermost(unsigned n, const H5E_error2_t* err, void* out) {
  auto* s = static_cast<std::string*>(out);
  if (n == 0 && err != nullptr) {
    if (err->desc != nullptr && err->desc[0] != '\0') {
      *s = err->desc;
    } else if (err->func_name != nullptr) {
      *s = std::string(err->func_name) + "() failed";
    }
  }
  return 0;
}
}  // namespace

std::string hdf5_error() {
  std::string desc;
  // H5Ewalk2 leaves the stack as it is (it does not clear it, unlike most API calls).
  if (H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, keep_innermost, &desc) < 0 || desc.empty())
    return "unknown HDF5 error";
  // A failed system call reads "..., errno = 28, error message = 'No space left on device', ...":
  // the quoted message is the reason.
  const std::string key = "error message = '";
  const auto at = desc.find(key);
  if (at != std::string::npos) {
    const auto end = desc.find('\'', at + key.size());
    if (end != std::string::npos) desc = desc.substr(at + key.size(), end - at - key.size());
  }
  for (char& c : desc)
    if (c == '\n' || c == '\r') c = ' ';  // HDF5 embeds ctime() strings, which end in '\n'
  return desc;
}

std::string file_name_of(hid_t obj) {
  char buf[4096];
  const ssize_t n = H5Fget_name(obj, buf, sizeof buf);
  return n > 0 ? std::string(buf, std::min<size_t>(static_cast<size_t>(n), sizeof buf - 1)) : "";
}

namespace {
[[noreturn]] void write_failed(hid_t obj, const char* name) {
  const std::string reason = hdf5_error();  // before file_name_of clears the stack
  throw std::runtime_error(file_name_of(obj) + ": cannot write attribute '" + name +
                           "': " + reason);
}
[[noreturn]] void read_failed(hid_t obj, const char* name) {
  const std::string reason = hdf5_error();
  throw UsageError(file_name_of(obj) + ": cannot read attribute '" + name + "': " + reason);
}
}  // namespace

void write_attr_int(hid_t obj, const char* name, int64_t value) {
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
  if (!space.valid()) write_failed(obj, name);
  H5Id attr(H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.valid() || H5Awrite(attr.get(), H5T_NATIVE_INT64, &value) < 0) write_failed(obj, name);
}

void write_attr_str(hid_t obj, const char* name, const std::string& value) {
  H5Id type(H5Tcopy(H5T_C_S1), H5Tclose);
  if (!type.valid() || H5Tset_size(type.get(), H5T_VARIABLE) < 0 ||
      H5Tset_cset(type.get(), H5T_CSET_UTF8) < 0)
    write_failed(obj, name);
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
  if (!space.valid()) write_failed(obj, name);
  H5Id attr(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  const char* p = value.c_str();
  if (!attr.valid() || H5Awrite(attr.get(), type.get(), &p) < 0) write_failed(obj, name);
}

namespace {
// Opens attribute `name` of obj with its type; nullopt when there is none.
std::optional<std::pair<H5Id, H5Id>> open_attr(hid_t obj, const char* name) {
  const htri_t exists = H5Aexists(obj, name);
  if (exists < 0) read_failed(obj, name);
  if (exists == 0) return std::nullopt;
  H5Id attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (!attr.valid()) read_failed(obj, name);
  H5Id type(H5Aget_type(attr.get()), H5Tclose);
  if (!type.valid()) read_failed(obj, name);
  return std::make_pair(std::move(attr), std::move(type));
}
}  // namespace

std::optional<int64_t> read_attr_int(hid_t obj, const char* name) {
  auto at = open_attr(obj, name);
  if (!at || H5Tget_class(at->second.get()) != H5T_INTEGER) return std::nullopt;
  H5Id space(H5Aget_space(at->first.get()), H5Sclose);
  if (!space.valid()) read_failed(obj, name);
  if (H5Sget_simple_extent_npoints(space.get()) != 1) return std::nullopt;  // an array: not ours
  int64_t v = 0;
  if (H5Aread(at->first.get(), H5T_NATIVE_INT64, &v) < 0) read_failed(obj, name);
  return v;
}

std::optional<std::string> read_attr_str(hid_t obj, const char* name) {
  auto at = open_attr(obj, name);
  if (!at) return std::nullopt;
  const hid_t attr = at->first.get(), type = at->second.get();
  if (H5Tget_class(type) != H5T_STRING) return std::nullopt;
  H5Id space(H5Aget_space(attr), H5Sclose);
  if (!space.valid()) read_failed(obj, name);
  if (H5Sget_simple_extent_npoints(space.get()) != 1) return std::nullopt;
  const htri_t variable = H5Tis_variable_str(type);
  if (variable < 0) read_failed(obj, name);
  if (variable > 0) {
    H5Id mem(H5Tcopy(H5T_C_S1), H5Tclose);
    if (!mem.valid() || H5Tset_size(mem.get(), H5T_VARIABLE) < 0 ||
        H5Tset_cset(mem.get(), H5Tget_cset(type)) < 0)  // HDF5 will not convert ASCII <-> UTF-8
      read_failed(obj, name);
    char* p = nullptr;
    if (H5Aread(attr, mem.get(), &p) < 0) read_failed(obj, name);
    std::string s(p ? p : "");
    H5free_memory(p);
    return s;
  }
  // Fixed-length strings, as other writers (numpy bytes attributes) make them. The size comes
  // from the file: a corrupt one is refused rather than allocated.
  const size_t n = H5Tget_size(type);
  if (n == 0) read_failed(obj, name);
  if (n > (size_t{1} << 20))
    throw UsageError(file_name_of(obj) + ": attribute '" + name + "' claims a string of " +
                     std::to_string(n) + " bytes");
  std::string s(n, '\0');
  if (H5Aread(attr, type, s.data()) < 0) read_failed(obj, name);
  s.resize(s.find('\0') == std::string::npos ? n : s.find('\0'));
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
