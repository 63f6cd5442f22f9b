// Reading documents out of the prep tool's inputs: plain UTF-8 text and JSONL.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace samout::data {

struct TextOptions {
  enum class Format { kAuto, kText, kJsonl };
  Format format = Format::kAuto;  // kAuto: .jsonl / .json files are JSONL, anything else text
  std::string separator = "%";    // a text line ending a document (fortune files; "": blank lines)
  std::string jsonl_field = "text";  // the string member of each JSONL object holding the text
  bool strip_ansi = true;            // drop ANSI escape sequences (colour codes)
};

// Thrown by json_string_field with a short reason (nlohmann's, with the column, or "no string
// field 'text'").
class JsonError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses `line` as one JSON object (validating all of it, UTF-8 included) and returns its decoded
// top-level string member `field`.
std::string json_string_field(std::string_view line, const std::string& field);

// Removes ANSI escape sequences: CSI sequences (ESC [ params final) and two-byte ESC sequences.
std::string strip_ansi(std::string_view s);

// Replaces each byte that is not part of well-formed UTF-8 (a stray continuation byte, a cut or
// overlong sequence, a surrogate, a code point above U+10FFFF) by U+FFFD; returns how many.
int64_t sanitize_utf8(std::string* s);

// Calls fn(doc, bytes_read) for every document of `path` in order, bytes_read being how far into
// the file the reader is. Documents are trimmed of surrounding blank lines, empty ones skipped,
// invalid UTF-8 replaced; returns the bytes replaced. Throws UsageError naming the file when it
// cannot be read or holds no document, or file:line for a JSONL line without a string field.
int64_t for_each_document(const std::string& path, const TextOptions& opt,
                          const std::function<void(std::string&& doc, int64_t bytes_read)>& fn);

}  // namespace samout::data
