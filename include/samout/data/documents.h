// Reading documents out of the prep tool's inputs: plain UTF-8 text and JSONL.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace samout::data {

struct TextOptions {
  enum class Format { kAuto, kText, kJsonl };
  Format format = Format::kAuto;  // kAuto: .jsonl / .json files are JSONL, anything else text
  // In text files a line equal to this string ends a document ("%" is the fortune-file
  // convention; "" makes blank lines the separator).
  std::string separator = "%";
  std::string jsonl_field = "text";  // the string member of each JSONL object holding the text
  bool strip_ansi = true;            // drop ANSI escape sequences (colour codes)
};

// Removes ANSI escape sequences: CSI sequences (ESC [ params final) and two-byte ESC sequences.
std::string strip_ansi(std::string_view s);

// Calls fn(doc, bytes_read) for every document of `path` in order, bytes_read being how far into
// the file the reader is. Documents are trimmed of surrounding blank lines; empty ones are
// skipped. Throws UsageError naming the file when it cannot be read or holds no document, and
// naming file:line for a JSONL line that is not an object with a string `jsonl_field`.
void for_each_document(const std::string& path, const TextOptions& opt,
                       const std::function<void(std::string&& doc, int64_t bytes_read)>& fn);

}  // namespace samout::data
