// Text and JSONL document readers (see documents.h).
#include "samout/data/documents.h"

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "samout/common/error.h"
#include "samout/data/jsonl.h"

namespace samout::data {

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
  size_t i = 0;
  while (i < s->size()) {  // fast path: valid text is not copied
    const size_t n = utf8_length(*s, i);
    if (n == 0) break;
    i += n;
  }
  if (i == s->size()) return 0;
  int64_t replaced = 0;
  std::string out(*s, 0, i);
  while (i < s->size()) {
    const size_t n = utf8_length(*s, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD
      ++replaced;
      ++i;
    } else {
      out.append(*s, i, n);
      i += n;
    }
  }
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

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
}  // namespace

int64_t for_each_document(const std::string& path, const TextOptions& opt,
                          const std::function<void(std::string&&, int64_t)>& fn) {
  std::unique_ptr<FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
  require(f != nullptr, path + ": cannot open file");
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

  char* buf = nullptr;
  size_t cap = 0;
  std::string doc;
  ssize_t len;
  while ((len = ::getline(&buf, &cap, f.get())) >= 0) {
    bytes += len;
    ++line_no;
    std::string_view line(buf, static_cast<size_t>(len));
    if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (jsonl) {
      if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
      std::string text;
      try {
        text = json_string_field(line, opt.jsonl_field);
      } catch (const JsonError& e) {
        std::free(buf);
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
  std::free(buf);
  require(!std::ferror(f.get()), path + ": read error");
  if (!jsonl) emit(std::move(doc));
  require(docs > 0, path + ": no documents (empty text input)");
  return replaced;
}

}  // namespace samout::data
