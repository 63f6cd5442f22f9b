"""The flag contract of every program in src/bin/ (common/flags_check.h), with real flagfiles.

    python tests/common/test_flags.py --bindir build/bin

For each of samout_ddp, samout_prep, samout_generate, samout_export and samout_info, each bad command
line exits with 2 and prints exactly one line, "<program>: error: ...", naming what is wrong:
  - an unknown flag, on the command line or inside a --flagfile (gflags exits 1 for the first and
    silently ignores the second: a flagfile holding --hiden=64 trained with the defaults);
  - a value of the wrong type, a flag missing its value;
  - a missing --flagfile, a directory, /dev/zero (gflags would read it forever);
  - a flagfile that includes itself, directly or through another (gflags recursed until it
    segfaulted), and a line in a flagfile that is not a flag (gflags silently ignores every flag
    after it).
And good command lines still work: flagfiles with comments, blank lines, CRLF endings, nested
flagfiles included twice without a cycle, --noflag, --undefok.
"""
import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import write  # noqa: E402

PROGRAMS = ["samout_ddp", "samout_prep", "samout_generate", "samout_export", "samout_info"]
# An integer and a bool flag of each program (export has only strings of its own: glog's --v).
INT = {"samout_ddp": "hidden", "samout_prep": "vocab_size", "samout_generate": "max_tokens",
       "samout_export": "v", "samout_info": "hidden"}
BOOL = {"samout_ddp": "tf32", "samout_prep": "strip_ansi", "samout_generate": "stats",
        "samout_export": "logtostderr", "samout_info": "names"}

def run(args):
    return harness.run(args, expect=None, timeout=60)


def expect_usage(prog_path, args, expect, failures):
    name = os.path.basename(prog_path)
    try:
        p = run([prog_path] + args)
    except subprocess.TimeoutExpired:
        failures.append(f"{name} {' '.join(args)}: hung")
        return
    lines = p.stderr.strip().splitlines()
    ok = p.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{name}: error: ") \
        and expect in lines[0]
    print(f"{'ok  ' if ok else 'FAIL'} {name} {' '.join(args)} -> exit {p.returncode}: "
          f"{lines[-1] if lines else ''}")
    if not ok:
        failures.append(f"{name} {' '.join(args)}: exit {p.returncode}, expected 2 and one line "
                        f"with '{expect}'; stderr:\n{p.stderr[-1500:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    a = ap.parse_args()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        unknown = write(os.path.join(tmp, "unknown.flags"),
                        "# typos that gflags ignores inside a flagfile\n--hiden=64\n--lerning_rate=0.5\n")
        self_flags = os.path.join(tmp, "self.flags")
        write(self_flags, f"--flagfile={self_flags}\n")
        ring_a, ring_b = os.path.join(tmp, "ring_a.flags"), os.path.join(tmp, "ring_b.flags")
        write(ring_a, f"# a\n--flagfile={ring_b}\n")
        write(ring_b, f"--flagfile={ring_a}\n")
        not_flag = write(os.path.join(tmp, "not_flag.flags"), "lr=1\n")
        for prog in PROGRAMS:
            path = os.path.join(a.bindir, prog)
            if not os.path.exists(path):
                sys.exit(f"FAIL: {path} is not built")
            i, b = INT[prog], BOOL[prog]
            no_value = write(os.path.join(tmp, prog + "_no_value.flags"), f"--{i}\n")
            spaced = write(os.path.join(tmp, prog + "_spaced.flags"), f"--{i} 1\n")
            bad_value = write(os.path.join(tmp, prog + "_bad_value.flags"), f"\n--{i}=1\n--{i}=one\n")
            cases = [
                (["--no_such_flag=1"], "unknown flag --no_such_flag"),
                ([f"--{i}=1.5x"], f"--{i}=1.5x: '1.5x' is not"),
                ([f"--{b}=maybe"], f"--{b}=maybe: 'maybe' is not a bool"),
                ([f"--{i}"], f"--{i} needs a value"),
                ([f"--no{i}"], "only negates a bool flag"),
                (["--flagfile=" + os.path.join(tmp, "missing.flags")], "No such file or directory"),
                (["--flagfile=" + tmp], "is a directory"),
                (["--flagfile=/dev/zero"], "not a regular file"),
                (["--flagfile=" + unknown], f"{unknown}:2: unknown flag --hiden"),
                (["--flagfile=" + self_flags], "includes itself"),
                (["--flagfile=" + ring_a], "includes itself"),
                (["--flagfile=" + not_flag], f"{not_flag}:1: 'lr=1' is not a flag"),
                (["--flagfile=" + no_value], f"{no_value}:1: --{i} needs a value"),
                (["--flagfile=" + spaced], "--name=value"),
                (["--flagfile=" + bad_value], f"{bad_value}:3: --{i}=one"),
            ]
            for args, expect in cases:
                expect_usage(path, args, expect, failures)

        # Good flagfiles still apply: samout_info's count for d=64, L=2, h=8 set through nested
        # flagfiles (CRLF endings, comments, one file included twice) equals the command line's.
        info = os.path.join(a.bindir, "samout_info")
        inner = write(os.path.join(tmp, "inner.flags"), "# model\r\n\r\n  --hidden=64\r\n--heads=8\r\n",
                      newline="")
        outer = write(os.path.join(tmp, "outer.flags"),
                      f"--layers=2\n--flagfile={inner}\n--flagfile={inner},\n--nonames\n")
        want = run([info, "--hidden=64", "--heads=8", "--layers=2"])
        got = run([info, f"--flagfile={outer}", "--undefok=not_ours", "--not_ours=1"])
        print(f"samout_info via flagfiles: exit {got.returncode}: {got.stdout.strip()}")
        if want.returncode != 0 or got.returncode != 0 or got.stdout != want.stdout:
            failures.append(f"good flagfiles: {got.returncode} {got.stdout!r} {got.stderr[-500:]} "
                            f"!= {want.stdout!r}")
        default = run([info]).stdout
        if got.stdout == default:
            failures.append("the flagfile's values were not applied")
    if failures:
        sys.exit("FAIL:\n" + "\n".join(failures))
    print("PASS flags")


if __name__ == "__main__":
    main()
