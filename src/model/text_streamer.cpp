// Streaming decode of generated ids (text_streamer.h).
#include "samout/model/text_streamer.h"

#include <algorithm>
#include <utility>

namespace samout::model {

namespace {
// SentencePiece decodes an incomplete byte-fallback character as U+FFFD (EF BF BD).
bool ends_incomplete(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}
}  // namespace

TextStreamer::TextStreamer(Decode decode, int context, int64_t window)
    : decode_(std::move(decode)), window_(window) {
  if (context >= 0) cache_.push_back(context);
  printed_ = cache_.empty() ? 0 : decode_(cache_).size();
}

std::string TextStreamer::push(int id) {
  cache_.push_back(id);
  const std::string text = decode_(cache_);
  // Hold back a character still waiting for bytes (UTF-8 has at most 4), unless the window has
  // grown far too long (a stream of stray bytes that never completes).
  const int64_t limit = std::max<int64_t>(4 * window_, 8);
  const bool hold = ends_incomplete(text) && static_cast<int64_t>(cache_.size()) < limit;
  if (hold) return "";
  std::string out = text.size() > printed_ ? text.substr(printed_) : std::string();
  printed_ = text.size();
  if (static_cast<int64_t>(cache_.size()) >= window_) {  // restart, the last id as context
    cache_.assign(1, id);
    printed_ = decode_(cache_).size();
  }
  return out;
}

std::string TextStreamer::finish() {
  const std::string text = cache_.empty() ? std::string() : decode_(cache_);
  std::string out = text.size() > printed_ ? text.substr(printed_) : std::string();
  printed_ = text.size();
  return out;
}

}  // namespace samout::model
