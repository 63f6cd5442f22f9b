// Reading prep's inputs: fortune-style text with ANSI colours, and JSONL.
#include <gtest/gtest.h>

#include <fstream>

#include "corpus_fixture.h"
#include "samout/common/error.h"
#include "samout/data/documents.h"

namespace samout::data {
namespace {

class DocumentsTest : public testing::TempDirTest {
 protected:
  std::vector<std::string> read(const std::string& name, const std::string& content,
                                TextOptions opt = {}) {
    std::ofstream(path(name), std::ios::binary) << content;
    std::vector<std::string> docs;
    for_each_document(path(name), opt, [&](std::string&& d, int64_t) { docs.push_back(d); });
    return docs;
  }
};

TEST_F(DocumentsTest, FortuneFilesSplitOnPercentAndLoseColourCodes) {
  const auto docs = read("f",
                         "\x1b[32m《静夜思》\x1b[m\n\x1b[33m作者：李白\x1b[m\n床前明月光\n%\n"
                         "A  spaced\tline\n\nsecond para\n%\n%\n\n  \n%\nlast");
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0], "《静夜思》\n作者：李白\n床前明月光");
  EXPECT_EQ(docs[1], "A  spaced\tline\n\nsecond para");  // inner whitespace is kept
  EXPECT_EQ(docs[2], "last");
  TextOptions blank;
  blank.separator = "";
  EXPECT_EQ(read("g", "one\ntwo\n\n\nthree\n", blank),
            (std::vector<std::string>{"one\ntwo", "three"}));
}

TEST_F(DocumentsTest, JsonlTakesTheNamedStringField) {
  TextOptions opt;
  opt.jsonl_field = "body";
  const auto docs =
      read("d.jsonl",
           "{\"id\": 1, \"body\": \"a\\nb \\u00e9\\ud83d\\ude00\", \"x\": [1, {\"y\": null}]}\n"
           "\n{\"body\":\"second\",\"meta\":{\"body\":\"nested, ignored\"}}\n",
           opt);
  EXPECT_EQ(docs, (std::vector<std::string>{"a\nb \xc3\xa9\xf0\x9f\x98\x80", "second"}));
}

TEST_F(DocumentsTest, BadInputNamesFileAndLine) {
  auto message = [&](const std::string& name, const std::string& content) -> std::string {
    try {
      read(name, content);
    } catch (const UsageError& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_EQ(message("e.txt", "\n%\n  \n"), path("e.txt") + ": no documents (empty text input)");
  EXPECT_EQ(message("b.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n"),
            path("b.jsonl") +
                ":2: unreadable JSONL line: syntax error while parsing value - invalid string: "
                "missing closing quote at column 24");
  EXPECT_EQ(message("n.jsonl", "{\"text\": \"ok\"}\n\n{\"title\": \"t\"}\n"),
            path("n.jsonl") + ":3: unreadable JSONL line: no string field 'text'");
  EXPECT_EQ(message("t.jsonl", "{\"text\": \"ok\"} x\n"),
            path("t.jsonl") +
                ":1: unreadable JSONL line: syntax error while parsing value - invalid literal at "
                "column 16");
}

TEST(Jsonl, RejectsMalformedObjects) {
  for (const char* bad : {"[\"text\"]", "{\"text\": }", "{\"text\": \"a\",}", "{\"text\" \"a\"}",
                          "{\"text\": \"\\q\"}", "{\"text\": tru}"})
    EXPECT_THROW(json_string_field(bad, "text"), JsonError) << bad;
  EXPECT_THROW(json_string_field("{\"text\": 5}", "text"), JsonError);         // not a string
  EXPECT_THROW(json_string_field("{\"text\": \"\xff\"}", "text"), JsonError);  // not UTF-8
  EXPECT_EQ(json_string_field(" {\"a\":-1.5e3,\"text\":\"\\\"q\\\"\"} ", "text"), "\"q\"");
}

TEST(Ansi, StripsCsiAndShortEscapes) {
  EXPECT_EQ(strip_ansi("\x1b[1;31mred\x1b[0m plain \x1b"
                       "cX"),
            "red plain X");
  EXPECT_EQ(strip_ansi("tail\x1b["), "tail");
}

}  // namespace
}  // namespace samout::data
