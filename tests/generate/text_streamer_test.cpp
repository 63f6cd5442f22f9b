// Tests of samout/model/text_streamer.h: streamed text equals the decoded continuation at every
// window size, and an incomplete character is held back.
#include "samout/model/text_streamer.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "samout/data/tokenizer.h"

namespace samout::model {
namespace {

TEST(TextStreamer, StreamedTextEqualsDecodedContinuation) {
  const auto tok = data::Tokenizer::from_file(SAMOUT_SAMPLE_TOKENIZER);
  const std::string prompt = "The story begins";
  std::string cont;
  for (int i = 0; i < 12; ++i)
    cont += " and then, naïve café 世界 🙂🚀 line " + std::to_string(i) + "\n  indented";
  std::vector<int> p, c;
  tok.encode(prompt, &p);
  tok.encode(cont, &c);
  std::vector<int> all = p;
  all.insert(all.end(), c.begin(), c.end());
  const std::string want = tok.decode(all).substr(tok.decode(p).size());
  for (int64_t window : {1, 2, 5, 32, 100000}) {
    TextStreamer s([&](const std::vector<int>& ids) { return tok.decode(ids); }, p.back(), window);
    std::string got;
    for (int id : c) got += s.push(id);
    got += s.finish();
    EXPECT_EQ(got, want) << "window " << window;
  }
}

TEST(TextStreamer, HoldsBackAnIncompleteCharacter) {
  // A fake decoder: ids are bytes; an incomplete UTF-8 sequence at the end decodes as U+FFFD.
  auto decode = [](const std::vector<int>& ids) {
    std::string s;
    for (int id : ids) s.push_back(static_cast<char>(id));
    if (!s.empty() && (static_cast<unsigned char>(s.back()) & 0xC0) == 0xC0) {
      s.pop_back();
      s += "\xEF\xBF\xBD";
    }
    return s;
  };
  TextStreamer s(decode, 'a', 8);
  EXPECT_EQ(s.push('b'), "b");
  EXPECT_EQ(s.push(0xC3), "");  // first byte of "é"
  EXPECT_EQ(s.push(0xA9), "\xC3\xA9");
  EXPECT_EQ(s.finish(), "");
}

}  // namespace
}  // namespace samout::model
