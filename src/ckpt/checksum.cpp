#include "samout/ckpt/checksum.h"

#include <xxhash.h>

#include <cstdio>
#include <memory>
#include <vector>

namespace samout::ckpt {

FileDigest digest_file(const std::string& path) {
  FileDigest d;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) return d;
  std::unique_ptr<XXH64_state_t, XXH_errorcode (*)(XXH64_state_t*)> st(XXH64_createState(),
                                                                       &XXH64_freeState);
  XXH64_reset(st.get(), 0);
  std::vector<char> buf(1 << 22);
  int64_t size = 0;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) {
    XXH64_update(st.get(), buf.data(), n);
    size += static_cast<int64_t>(n);
  }
  if (std::ferror(f.get())) return d;
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx",
                static_cast<unsigned long long>(XXH64_digest(st.get())));
  d.size = size;
  d.xxh64 = hex;
  return d;
}

}  // namespace samout::ckpt
