// Turns generated ids into text as they come, printing each piece once.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace samout::model {

// Decoding a growing window would cost O(n) per token; instead the window restarts every `window`
// tokens at a clean boundary, seeded with one token of context so that a leading "▁" (a space)
// decodes as a space and a byte-fallback character split across tokens is held back until it is
// complete.
class TextStreamer {
 public:
  using Decode = std::function<std::string(const std::vector<int>&)>;
  // context: the last id before the generated ones (-1: none).
  TextStreamer(Decode decode, int context, int64_t window = 32);
  std::string push(int id);  // the new text this id completes (maybe "")
  std::string finish();      // whatever is held back (an incomplete character), as decoded

 private:
  std::string unprinted(const std::string& text);  // text past printed_; marks it printed
  Decode decode_;
  std::vector<int> cache_;
  size_t printed_ = 0;  // bytes of decode(cache_) already returned
  int64_t window_;
};

}  // namespace samout::model
