// The command line read as gflags 2.2 reads it (ParseNewCommandLineFlags, SplitArgumentLocked,
// ProcessOptionsFromStringLocked), but with every problem reported instead of ignored or fatal.
#include "samout/common/flags_check.h"

#include <gflags/gflags.h>
#include <glog/logging.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "samout/common/error.h"
#include "samout/common/strings.h"

namespace samout {

namespace {

constexpr long kMaxFlagfileBytes = 1 << 20;
// Deeper than any sane set of flagfiles; a cycle is caught before this by the path check.
constexpr size_t kMaxFlagfileDepth = 64;

// Whether gflags accepts `value` for the flag: it is set, then every flag is put back. A string
// always parses, and setting --flagfile or --fromenv would read files and the environment.
bool parses_as(const gflags::CommandLineFlagInfo& info, const std::string& value) {
  if (info.type == "string") return true;
  gflags::FlagSaver restore;
  return !gflags::SetCommandLineOption(info.name.c_str(), value.c_str()).empty();
}

std::string kind_of(const std::string& type) {
  if (type == "bool") return "a bool (true/false, 1/0, yes/no)";
  if (type == "double") return "a number";
  if (type == "int32" || type == "int64") return "an integer (" + type + ")";
  return "a non-negative integer (" + type + ")";
}

// gflags' ParseFlagList: a comma-separated list with no empty entry and no entry starting with '-'.
bool split_flag_list(const std::string& list, std::vector<std::string>* out) {
  for (const auto& item : split_list(list)) {
    if (item.empty() || item[0] == '-') return false;
    out->push_back(item);
  }
  return true;
}

class Checker {
 public:
  // Every argument of argv, in order; stops at "--" as gflags does.
  void command_line(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      const char* arg = argv[i];
      if (arg[0] != '-' || arg[1] == '\0') continue;  // a program argument
      arg += arg[1] == '-' ? 2 : 1;
      if (*arg == '\0') break;  // "--": the rest are program arguments
      bool used_next = false;
      flag(arg, i + 1 < argc ? argv[i + 1] : nullptr, &used_next, "");
      if (used_next) ++i;
    }
  }

  // The first problem, in command-line order, that --undefok does not excuse.
  std::string first_problem() const {
    for (const auto& p : problems_) {
      const bool excused =
          !p.unknown.empty() && std::any_of(undefok_.begin(), undefok_.end(), [&](auto& u) {
            return u == p.unknown || "no" + u == p.unknown;
          });
      if (!excused) return p.message;
    }
    return "";
  }

 private:
  struct Problem {
    std::string unknown;  // the name, when the problem is an unknown flag (--undefok may excuse it)
    std::string message;
  };

  void problem(const std::string& message, const std::string& unknown = "") {
    problems_.push_back({unknown, message});
  }

  // One "name[=value]" with its dashes stripped. `next` is the following argument, which a non-bool
  // flag written without '=' takes as its value (nullptr, with used_next, in a flagfile). `where`
  // prefixes messages ("" on the command line, "FILE:LINE: " in a flagfile).
  void flag(const std::string& arg, const char* next, bool* used_next, const std::string& where) {
    const size_t eq = arg.find('=');
    const std::string key = arg.substr(0, eq);
    bool has_value = eq != std::string::npos;
    std::string value = has_value ? arg.substr(eq + 1) : "";
    gflags::CommandLineFlagInfo info;
    if (!gflags::GetCommandLineFlagInfo(key.c_str(), &info)) {
      gflags::CommandLineFlagInfo base;
      if (key.compare(0, 2, "no") == 0 && gflags::GetCommandLineFlagInfo(key.c_str() + 2, &base)) {
        if (base.type != "bool")
          return problem(where + "--" + key + ": --no<flag> only negates a bool flag, and --" +
                         base.name + " is " + kind_of(base.type));
        info = base;
        has_value = true;  // gflags: --noflag means --flag=0, whatever follows an '='
        value = "0";
      } else if (key.find_first_of(" \t") != std::string::npos) {
        return problem(where + "'--" + arg + "': write a flag as --name=value, without spaces",
                       key);
      } else {
        return problem(where + "unknown flag --" + key, key);
      }
    }
    if (!has_value) {
      if (info.type == "bool") {
        value = "1";
      } else if (next != nullptr) {
        value = next;
        *used_next = true;
      } else {
        return problem(where + "--" + key + " needs a value (--" + key + "=VALUE)");
      }
    }
    if (!parses_as(info, value))
      return problem(where + "--" + key + "=" + value + ": '" + value + "' is not " +
                     kind_of(info.type));
    if (info.name == "flagfile") {
      flagfiles(value, where);
    } else if (info.name == "fromenv" || info.name == "tryfromenv") {
      fromenv(value, info.name == "fromenv", where);
    } else if (info.name == "undefok") {
      split_flag_list(value, &undefok_);
    }
  }

  void flagfiles(const std::string& list, const std::string& where) {
    std::vector<std::string> files;
    if (!split_flag_list(list, &files))
      return problem(where + "--flagfile=" + list +
                     ": a comma-separated list of files, with no empty entry");
    for (const auto& f : files) flagfile(f, where);
  }

  void flagfile(const std::string& path, const std::string& where) {
    const std::string what = where + "--flagfile=" + path;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return problem(what + ": " + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) return problem(what + ": is a directory, not a flagfile");
    if (!S_ISREG(st.st_mode))
      return problem(what + ": not a regular file (a device, FIFO or socket), not a flagfile");
    if (st.st_size > kMaxFlagfileBytes)
      return problem(what + ": " + std::to_string(st.st_size) + " bytes; a flagfile is at most " +
                     std::to_string(kMaxFlagfileBytes) + " bytes");
    char* real = ::realpath(path.c_str(), nullptr);
    const std::string canonical = real ? real : path;
    std::free(real);
    for (size_t i = 0; i < stack_.size(); ++i) {
      if (stack_[i].canonical != canonical) continue;
      std::string chain;
      for (size_t j = i; j < stack_.size(); ++j) chain += stack_[j].shown + " -> ";
      return problem(what + ": the flagfile includes itself (" + chain + path + ")");
    }
    if (stack_.size() >= kMaxFlagfileDepth)
      return problem(what + ": flagfiles nested more than " + std::to_string(kMaxFlagfileDepth) +
                     " deep");
    std::ifstream in(path, std::ios::binary);
    if (!in.is_open()) return problem(what + ": " + std::strerror(errno));
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) return problem(what + ": cannot read it");
    if (text.find('\0') != std::string::npos)
      return problem(what + ": holds a NUL byte; a flagfile is text");
    // gflags ends a line at the first '\r' if the rest of the file has one, else at '\n': with
    // mixed endings it would read several lines as one value.
    const bool has_cr = text.find('\r') != std::string::npos;
    for (size_t nl = text.find('\n'); has_cr && nl != std::string::npos;
         nl = text.find('\n', nl + 1))
      if (nl == 0 || text[nl - 1] != '\r')
        return problem(what + ": mixes \\r\\n and \\n line endings");
    stack_.push_back({canonical, path});
    lines(text, path);
    stack_.pop_back();
  }

  // Reports every line gflags would skip or misread: an unknown flag, a flag without a value, and a
  // line that is neither flag nor comment (gflags ignores every flag after it).
  void lines(const std::string& text, const std::string& path) {
    size_t pos = 0;
    while (pos < text.size()) {
      while (pos < text.size() && std::isspace(static_cast<unsigned char>(text[pos]))) ++pos;
      if (pos == text.size()) break;
      const size_t end = std::min(text.find_first_of("\r\n", pos), text.size());
      const std::string line = text.substr(pos, end - pos);
      const std::string where =
          path + ":" + std::to_string(1 + std::count(text.begin(), text.begin() + pos, '\n')) +
          ": ";
      pos = end;
      if (line[0] == '#') continue;
      if (line[0] != '-') {
        problem(where + "'" + line +
                "' is not a flag: a flagfile holds --name=value lines, # comments and blank lines");
        continue;
      }
      flag(line.substr(line.size() > 1 && line[1] == '-' ? 2 : 1), nullptr, nullptr, where);
    }
  }

  // --fromenv=a,b reads FLAGS_a and FLAGS_b (each must exist); --tryfromenv those that exist.
  void fromenv(const std::string& list, bool required, const std::string& where) {
    const std::string what = where + (required ? "--fromenv=" : "--tryfromenv=") + list;
    std::vector<std::string> names;
    if (!split_flag_list(list, &names))
      return problem(what + ": a comma-separated list of flags, with no empty entry");
    for (const auto& name : names) {
      gflags::CommandLineFlagInfo info;
      if (!gflags::GetCommandLineFlagInfo(name.c_str(), &info)) {
        problem(what + ": unknown flag --" + name, name);
        continue;
      }
      const char* env = std::getenv(("FLAGS_" + name).c_str());
      if (env == nullptr) {
        if (required) problem(what + ": FLAGS_" + name + " is not set in the environment");
        continue;
      }
      const std::string value = env;
      if (value == "fromenv" || value == "tryfromenv") {
        problem(what + ": FLAGS_" + name + "=" + value + " would recurse");
      } else if (!parses_as(info, value)) {
        problem(what + ": FLAGS_" + name + "='" + value + "' is not " + kind_of(info.type));
      } else if (info.name == "flagfile") {
        flagfiles(value, what + ": FLAGS_flagfile: ");
      }
    }
  }

  struct Open {
    std::string canonical, shown;
  };
  std::vector<Open> stack_;  // the flagfiles being read, outermost first
  std::vector<std::string> undefok_;
  std::vector<Problem> problems_;
};

// Set while gflags parses: should gflags exit (with 1) on an error the Checker missed, the exit
// code is the contract's 2. gflags has printed its own message by then.
std::atomic<bool> g_in_gflags{false};

void exit_usage_if_in_gflags() {
  if (g_in_gflags.load()) ::_exit(kExitUsage);
}

}  // namespace

std::string parse_flags(int* argc, char*** argv) {
  Checker checker;
  checker.command_line(*argc, *argv);
  const std::string error = checker.first_problem();
  if (!error.empty()) return error;
  [[maybe_unused]] static const int registered = std::atexit(exit_usage_if_in_gflags);
  g_in_gflags = true;
  gflags::ParseCommandLineNonHelpFlags(argc, argv, /*remove_flags=*/true);
  g_in_gflags = false;
  gflags::HandleCommandLineHelpFlags();  // --help and friends: gflags' own output and exit
  return "";
}

void start_program(const char* program, const char* usage, int* argc, char*** argv) {
  gflags::SetUsageMessage(usage);
  const std::string error = parse_flags(argc, argv);
  if (!error.empty()) {
    std::fprintf(stderr, "%s: error: %s\n", program, error.c_str());
    std::exit(kExitUsage);
  }
  FLAGS_logtostderr = true;
  google::InitGoogleLogging((*argv)[0]);
}

}  // namespace samout
