// Command-line checking that gflags does not do, shared by every program in src/bin/.
//
// gflags exits with 1 on a bad flag (the contract says 2), silently ignores an unknown flag or a
// malformed line inside a --flagfile (--hiden=64 there trains with the defaults), and recurses
// without end into a flagfile that includes itself. So the command line, and every flagfile it
// names, is first read the way gflags will read it and checked; only then does gflags parse it.
#pragma once

#include <string>

namespace samout {

// Checks argv and every flagfile it includes, then gflags::ParseCommandLineNonHelpFlags (flags
// removed from argv) and gflags' --help handling. Returns "", or one line naming the first problem
// (with FILE:LINE inside a flagfile), and then no flag was changed. It refuses:
//   - an unknown --name (or --noname of a non-bool), unless listed in --undefok;
//   - a value that does not parse as the flag's type, a flag with no value;
//   - a flagfile that is not a regular file of at most 1 MiB, includes itself (directly or through
//     others), or holds a line other than --name=value, # comment or blank (gflags takes a stray
//     line for a "program name" section, which silently switches off every flag after it);
//   - --fromenv naming a variable that is not set or does not parse.
// Should gflags still exit on an error this check missed, the exit code is 2, not 1.
std::string parse_flags(int* argc, char*** argv);

// The start of a single-process program: its --help text, parse_flags() (on an error, "<program>:
// error: <line>" on stderr and exit code 2), then glog, logging to stderr.
void start_program(const char* program, const char* usage, int* argc, char*** argv);

}  // namespace samout
