"""What the end-to-end tests (tests/*/test_*.py) share: running programs under mpirun, reading what
they write, temporary folders, full disks, one-line errors, case dispatch.

A test finds it relative to its own file (the same under ctest and by hand):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
Standard library only at import: h5py and torch are imported by the helpers that need them.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKIP = 77  # the tests' SKIP_RETURN_CODE in CMake
# Open MPI refuses root (CI containers run as root) and more ranks than cores (a 2-core machine).
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
# The tiny SamOut the CPU tests train (tests/ckpt's export case rebuilds it in PyTorch: V, d, h, L).
TINY_MODEL = ["--vocab_size=300", "--hidden=48", "--layers=2", "--heads=4", "--seq_len=24"]


# ---- processes -----------------------------------------------------------------------------------

def mpirun(n):
    """The prefix that runs a command as n ranks; none for one (a world of one needs no mpirun)."""
    return ["mpirun", "--oversubscribe", "-np", str(n)] if n > 1 else []


def run(cmd, n=1, expect=0, timeout=300, text=True, env=ENV, cwd=None):
    """Runs cmd (as n ranks), output captured. An exit status other than expect (None: any) fails
    the test with the command and the end of its output."""
    p = subprocess.run(mpirun(n) + list(cmd), env=env, cwd=cwd, capture_output=True, text=text,
                       timeout=timeout)
    if expect is not None and p.returncode != expect:
        out, err = ((s if text else s.decode(errors="replace")) for s in (p.stdout, p.stderr))
        sys.exit(f"FAIL: {' '.join(map(str, cmd))} ({n} rank(s)) exited {p.returncode}, expected "
                 f"{expect}\nstdout (end): {out[-2000:]}\nstderr (end): {err[-4000:]}")
    return p


def spawn(cmd, n=1):
    """Starts cmd (as n ranks) in the background, stdout and stderr piped, for a test to signal."""
    return subprocess.Popen(mpirun(n) + list(cmd), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def child_pids(pid, name=None):
    """The processes whose parent is pid (mpirun's ranks), optionally only those named name."""
    out = subprocess.run(["pgrep", "-P", str(pid)] + (["-f", name] if name else []),
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def check(cond, what, ok=False):
    """Fails the test saying what unless cond; with ok, says "ok: what" when it holds."""
    if not cond:
        sys.exit(f"FAIL: {what}")
    if ok:
        print("ok:", what)


def skip(why):
    """Ends the test as skipped (ctest's SKIP_RETURN_CODE), saying why."""
    print(f"SKIP: {why}")
    sys.exit(SKIP)


# ---- errors: one line on stderr -----------------------------------------------------------------

def expect_error(p, expect="", program="samout_ddp", what=None, code=2):
    """p exited code with exactly one line of program's on stderr ("program: ...", other lines such
    as mpirun's aside), holding expect; returns it. With what, prints what came out."""
    ours = [line for line in p.stderr.splitlines() if line.startswith(program + ":")]
    if what is not None:
        print(f"{what} -> exit {p.returncode}: {ours}")
    assert p.returncode == code, (what, p.returncode, p.stderr[-2000:])
    assert len(ours) == 1 and expect in ours[0], (what, p.stderr[-3000:])
    return ours[0]


# ---- what the programs write ---------------------------------------------------------------------

def read_jsonl(path):
    """Every line of a JSONL file (a metrics file), parsed."""
    with open(path) as f:
        return [json.loads(line) for line in f]


def metrics(path):
    """A samout_ddp metrics file: (training rows, validation rows, the last row)."""
    rows = read_jsonl(path)
    return [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r], rows[-1]


def losses(path):
    """A metrics file's training losses by step."""
    return {r["step"]: r["loss"] for r in read_jsonl(path) if "loss" in r}


def weights(path):
    """Every dataset of an HDF5 weights file (--save_weights, model.h5), by name."""
    import h5py
    with h5py.File(path) as f:
        return {k: f[k][()] for k in f}


def write(path, text, newline=None, executable=False):
    """Writes text to path (newline as open's: "" keeps "\\r\\n"); returns path."""
    with open(path, "w", newline=newline) as f:
        f.write(text)
    if executable:
        os.chmod(path, 0o755)
    return path


def reference_samout():
    """The seed's PyTorch SamOut (tests/python/reference_model.py); imports torch."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
    from reference_model import SamOut
    return SamOut


# ---- full disks: a small tmpfs in a private mount namespace --------------------------------------

def private_mount_prefix(tmp):
    """A command prefix running in a private mount namespace where tmpfs can be mounted, or None."""
    probe = os.path.join(tmp, "probe")
    os.makedirs(probe, exist_ok=True)
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        r = subprocess.run(prefix + ["sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', probe],
                           capture_output=True)
        if r.returncode == 0:
            return prefix
    return None


def run_on_tmpfs(prefix, mountpoint, size_kb, cmd, timeout=300):
    """Runs cmd with a size_kb tmpfs mounted on mountpoint (an existing empty folder), in prefix's
    private namespace. Returns the process (exit 99: the mount failed) and what cmd left on the
    tmpfs (`ls -A`, read before the namespace and its tmpfs go away)."""
    listing = mountpoint.rstrip("/") + ".listing"
    script = ('m="$0"; l="$2"; mount -t tmpfs -o size="$1"k tmpfs "$m" || exit 99; shift 2; "$@"; '
              'rc=$?; ls -A "$m" > "$l"; exit $rc')
    p = subprocess.run(prefix + ["sh", "-c", script, mountpoint, str(size_kb), listing] + list(cmd),
                       env=ENV, capture_output=True, text=True, timeout=timeout)
    left = None
    if os.path.exists(listing):
        with open(listing) as f:
            left = f.read()
        os.remove(listing)
    return p, left


# ---- test layouts --------------------------------------------------------------------------------

def case_parser(namespace):
    """An argument parser whose first argument names one of the case_<name> functions of
    namespace (a test's globals()): each is a ctest of its own."""
    names = sorted(k[5:] for k, v in namespace.items() if k.startswith("case_") and callable(v)
                   and v.__module__ == namespace["__name__"])  # not this module's case_parser
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=names)
    return ap


def run_case(namespace, a, ignore_cleanup_errors=False):
    """Runs case_<a.case>(a, tmp) with a fresh temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"samout_{a.case}_",
                                     ignore_cleanup_errors=ignore_cleanup_errors) as tmp:
        namespace["case_" + a.case](a, tmp)
    print("PASS", a.case)


class TempDirTest(unittest.TestCase):
    """A unittest case with a fresh folder, self.dir, removed after each test."""

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name

    def assert_one_error_line(self, r, *fragments, prefix="", code=2, what=""):
        """r exited code with one line on stderr, starting with prefix and holding every fragment;
        returns the line. what starts the failure messages."""
        self.assertEqual(r.returncode, code, what + r.stderr)
        lines = r.stderr.splitlines()
        self.assertEqual(len(lines), 1, what + r.stderr)
        self.assertTrue(lines[0].startswith(prefix), lines[0])
        for frag in fragments:
            self.assertIn(frag, lines[0])
        return lines[0]
