// File checksums for checkpoint manifests: XXH64 (Debian's libxxhash), hex-encoded. A checkpoint
// file whose size or checksum differs from its manifest entry is corrupt (truncated, bit-flipped).
#pragma once

#include <cstdint>
#include <string>

namespace samout::ckpt {

struct FileDigest {
  int64_t size = -1;  // -1: the file could not be read
  std::string xxh64;  // 16 hex digits
};

FileDigest digest_file(const std::string& path);

}  // namespace samout::ckpt
