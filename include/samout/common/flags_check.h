// Command-line checking that gflags does not do, shared by every program in src/bin/.
//
// gflags exits with code 1 on a bad flag (the contract says 2), silently ignores an unknown flag or
// a malformed line inside a --flagfile (a flagfile holding --hiden=64 trains with the defaults),
// and recurses without end into a flagfile that includes itself (a segfault). So before gflags sees
// the command line, check_command_line() reads it, and every --flagfile it names (recursively), the
// way gflags will, and checks that every flag is registered and every value parses as its type.
// Only a command line that passed is handed to gflags, which then cannot fail.
#pragma once

#include <string>

namespace samout {

// Checks argv and every flagfile it includes. Returns "" when gflags will accept it all, else one
// line naming what is wrong (and, inside a flagfile, the file and line). Changes no flag.
//   - every --name (or --noname for a bool) is a registered flag, unless listed in --undefok;
//   - every value parses as the flag's type (bool, int32, uint32, int64, uint64, double);
//   - a flag that needs a value has one;
//   - a flagfile is a regular file of at most kMaxFlagfileBytes, that does not include itself,
//     directly or through others, and holds only --name=value lines, # comments and blank lines
//     (gflags' "program name" section lines are refused: a stray line would silently switch off
//     every flag after it);
//   - the variables named by --fromenv exist and parse.
std::string check_command_line(int argc, char** argv);

constexpr long kMaxFlagfileBytes = 1 << 20;

// check_command_line(), then gflags::ParseCommandLineNonHelpFlags (flags removed from argv) and
// gflags' --help handling. Returns "" or the error line (then no flag was changed). Should gflags
// still exit on an error this check missed, the process exits with 2 (kExitUsage), not 1.
std::string parse_flags(int* argc, char*** argv);

// For single-process programs: parse_flags(), and on an error "<program>: error: <line>" on stderr
// and exit code 2.
void parse_flags_or_exit(const char* program, int* argc, char*** argv);

}  // namespace samout
