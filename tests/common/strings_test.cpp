// common/strings.h: the one comma splitter, the one duration format and the one elapsed-time clock.
#include "samout/common/strings.h"

#include <gtest/gtest.h>

#include <limits>

namespace samout {
namespace {

using V = std::vector<std::string>;

TEST(SplitList, KeepsEmptyEntriesButNotATrailingSeparator) {
  EXPECT_EQ(split_list(""), V{});
  EXPECT_EQ(split_list("a"), V{"a"});
  EXPECT_EQ(split_list("a,b"), (V{"a", "b"}));
  EXPECT_EQ(split_list("a,,b"), (V{"a", "", "b"}));
  EXPECT_EQ(split_list(",a"), (V{"", "a"}));
  EXPECT_EQ(split_list("a,"), V{"a"});  // as gflags reads a list flag
  EXPECT_EQ(split_list("x:y", ':'), (V{"x", "y"}));
}

TEST(FormatDuration, SecondsMinutesHours) {
  EXPECT_EQ(format_duration(0), "0.0s");
  EXPECT_EQ(format_duration(12.34), "12.3s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(3720), "1h02m");
  EXPECT_EQ(format_duration(-1), "?");
  EXPECT_EQ(format_duration(std::numeric_limits<double>::infinity()), "?");
}

TEST(SecondsSince, CountsSecondsOnTheSteadyClock) {
  const auto now = std::chrono::steady_clock::now();
  const double s = seconds_since(now - std::chrono::milliseconds(2500));
  EXPECT_GE(s, 2.5);
  EXPECT_LT(s, 2.5 + 60);  // however slow the machine, not a unit error (ms would read 2500)
  EXPECT_GE(seconds_since(now), 0.0);
}

}  // namespace
}  // namespace samout
