// Text and JSONL document readers (see documents.h).
#include "samout/data/documents.h"

#include <nlohmann/json.hpp>

#include <fstream>

#include "samout/common/error.h"

namespace samout::data {

std::string json_string_field(std::string_view line, const std::string& field) {
  nlohmann::json object;
  try {
    object = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    // what(): "[json.exception.parse_error.101] parse error at line 1, column 24: <reason>; last
    // read: '<the line so far>'": keep the reason and the column, not the echo of the line.
    std::string reason = e.what();
    const size_t start = reason.find(": ");
    reason = start == std::string::npos ? reason : reason.substr(start + 2);
    reason = reason.substr(0, reason.find("; last read"));
    throw JsonError(reason + " at column " + std::to_string(e.byte));
  }
  const auto it = object.is_object() ? object.find(field) : object.end();
  if (it == object.end() || !it->is_string()) throw JsonError("no string field '" + field + "'");
  return it->get<std::string>();
}

std::string strip_ansi(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\x1b') {
      out.push_back(s[i]);
      continue;
    }
    if (i + 1 < s.size() && s[i + 1] == '[') {
      // CSI: parameter and intermediate bytes (0x20-0x3F), then one final byte (0x40-0x7E).
      size_t j = i + 2;
      while (j < s.size() && s[j] >= 0x20 && s[j] <= 0x3F) ++j;
      i = j < s.size() ? j : s.size() - 1;
    } else {
      ++i;  // ESC plus one byte
    }
  }
  return out;
}

namespace {
// Length of the well-formed UTF-8 sequence at s[i] (Unicode 15, table 3-7), 0 when there is none.
size_t utf8_length(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  const size_t left = s.size() - i;
  auto cont = [&](size_t k, unsigned char lo = 0x80, unsigned char hi = 0xBF) {
    return k < left && b(k) >= lo && b(k) <= hi;
  };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    const unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    return cont(1, lo, hi) && cont(2) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    const unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    return cont(1, lo, hi) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}
}  // namespace

int64_t sanitize_utf8(std::string* s) {
  std::string out;  // built only when a byte is replaced: valid text is not copied
  int64_t replaced = 0;
  size_t copied = 0;  // s[0, copied) is in out
  for (size_t i = 0; i < s->size();) {
    const size_t n = utf8_length(*s, i);
    if (n > 0) {
      i += n;
      continue;
    }
    out.append(*s, copied, i - copied).append("\xEF\xBF\xBD");  // U+FFFD
    ++replaced;
    copied = ++i;
  }
  if (replaced == 0) return 0;
  out.append(*s, copied, std::string::npos);
  *s = std::move(out);
  return replaced;
}

namespace {
bool ends_with(const std::string& s, const char* suffix) {
  const std::string_view t(suffix);
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

// Drops leading and trailing blank lines and trailing whitespace: the separators' leftovers.
std::string trim_doc(std::string s) {
  const auto last = s.find_last_not_of(" \t\r\n");
  if (last == std::string::npos) return {};
  s.resize(last + 1);
  size_t first = 0;
  while (true) {
    const size_t nl = s.find('\n', first);
    if (nl == std::string::npos || s.find_first_not_of(" \t\r", first) < nl) break;
    first = nl + 1;
  }
  return s.substr(first);
}
}  // namespace

int64_t for_each_document(const std::string& path, const TextOptions& opt,
                          const std::function<void(std::string&&, int64_t)>& fn) {
  std::ifstream in(path, std::ios::binary);
  require(in.is_open(), path + ": cannot open file");
  const bool jsonl = opt.format == TextOptions::Format::kJsonl ||
                     (opt.format == TextOptions::Format::kAuto &&
                      (ends_with(path, ".jsonl") || ends_with(path, ".json")));
  int64_t docs = 0, bytes = 0, line_no = 0, replaced = 0;
  auto emit = [&](std::string text) {
    if (opt.strip_ansi) text = strip_ansi(text);
    replaced += sanitize_utf8(&text);  // after stripping, which works on bytes
    text = trim_doc(std::move(text));
    if (text.empty()) return;
    ++docs;
    fn(std::move(text), bytes);
  };

  std::string raw, doc;
  while (std::getline(in, raw)) {
    bytes += static_cast<int64_t>(raw.size()) + (in.eof() ? 0 : 1);  // the '\n' too
    ++line_no;
    std::string_view line(raw);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (jsonl) {
      if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
      std::string text;
      try {
        text = json_string_field(line, opt.jsonl_field);
      } catch (const JsonError& e) {
        throw UsageError(path + ":" + std::to_string(line_no) +
                         ": unreadable JSONL line: " + e.what());
      }
      emit(std::move(text));
    } else if (line == opt.separator) {
      emit(std::move(doc));
      doc.clear();
    } else {
      doc.append(line).push_back('\n');
    }
  }
  require(!in.bad(), path + ": read error");
  if (!jsonl) emit(std::move(doc));
  require(docs > 0, path + ": no documents (empty text input)");
  return replaced;
}

}  // namespace samout::data
