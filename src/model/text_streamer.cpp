// Streaming decode of generated ids (text_streamer.h).
#include "samout/model/text_streamer.h"

#include <algorithm>
#include <utility>

namespace samout::model {

TextStreamer::TextStreamer(Decode decode, int context, int64_t window)
    : decode_(std::move(decode)), window_(window) {
  if (context >= 0) cache_.push_back(context);
  printed_ = cache_.empty() ? 0 : decode_(cache_).size();
}

std::string TextStreamer::push(int id) {
  cache_.push_back(id);
  const std::string text = decode_(cache_);
  // Hold back a character still waiting for bytes (SentencePiece decodes an incomplete byte-fallback
  // character as U+FFFD, EF BF BD), unless the window has grown far too long (a stream of stray
  // bytes that never completes).
  const bool incomplete = text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
  if (incomplete && static_cast<int64_t>(cache_.size()) < std::max<int64_t>(4 * window_, 8))
    return "";
  std::string out = unprinted(text);
  if (static_cast<int64_t>(cache_.size()) >= window_) {  // restart, the last id as context
    cache_.assign(1, id);
    printed_ = decode_(cache_).size();
  }
  return out;
}

std::string TextStreamer::finish() { return unprinted(cache_.empty() ? "" : decode_(cache_)); }

std::string TextStreamer::unprinted(const std::string& text) {
  std::string out = text.size() > printed_ ? text.substr(printed_) : std::string();
  printed_ = text.size();
  return out;
}

}  // namespace samout::model
