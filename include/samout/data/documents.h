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

// Replaces every byte that is not part of well-formed UTF-8 (a stray continuation byte, a cut or
// overlong sequence, an encoded surrogate, a code point above U+10FFFF) by U+FFFD, one for each
// byte, and returns how many bytes were replaced. Text without such bytes is left as it is.
int64_t sanitize_utf8(std::string* s);

// Calls fn(doc, bytes_read) for every document of `path` in order, bytes_read being how far into
// the file the reader is. Documents are trimmed of surrounding blank lines; empty ones are
// skipped; invalid UTF-8 is replaced (sanitize_utf8). Returns the number of bytes replaced, for
// the caller's warning. Throws UsageError naming the file when it cannot be read or holds no
// document, and naming file:line for a JSONL line that is not an object with a string
// `jsonl_field`.
int64_t for_each_document(const std::string& path, const TextOptions& opt,
                          const std::function<void(std::string&& doc, int64_t bytes_read)>& fn);

}  // namespace samout::data
