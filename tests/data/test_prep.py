"""samout_prep end to end, as real processes: text/JSONL -> HDF5 -> tokens -> text.

The HDF5 files are read back with h5py alone and decoded with SentencePiece's own `spm_decode`
CLI using the model embedded in the file, so the corpus is shown to be self-describing. Every
bad input must exit 2 with one line on stderr naming the file, and write nothing.
The program's path comes from $SAMOUT_PREP (set by CTest).
"""
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import unittest

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from harness import TempDirTest, private_mount_prefix, run, run_on_tmpfs, write  # noqa: E402

PREP = os.environ.get("SAMOUT_PREP", "build-data/bin/samout_prep")

POEMS = [
    "\x1b[32m《静夜思》\x1b[m\n\x1b[33m作者：李白\x1b[m\n"
    "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
    "\x1b[32m《春晓》\x1b[m\n\x1b[33m作者：孟浩然\x1b[m\n"
    "春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。",
]
ENGLISH = [f"Fortune {i}: a  spaced\tline, with  tabs\n\n  and an indented second paragraph {i * 7}."
           for i in range(60)]


def strip_ansi(s):
    import re
    return re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]", "", s)


def run_prep(*args):
    return run([PREP, "--progress=0", *args], expect=None)


def read_docs(paths, eos):
    """Documents of a split, from h5py alone: the concatenated tokens cut after each eos."""
    tokens = np.concatenate([h5py.File(p, "r")["tokens"][:] for p in paths])
    ends = np.flatnonzero(tokens == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokens[s:e] for s, e in zip(starts, ends)]


def spm_decode(model_path, ids):
    out = subprocess.run(["spm_decode", f"--model={model_path}", "--input_format=id"],
                         input=" ".join(map(str, ids)) + "\n", capture_output=True, text=True,
                         check=True).stdout
    return out[:-1]  # spm_decode ends each decoded line with "\n"


class PrepTest(TempDirTest):
    def setUp(self):
        super().setUp()
        os.makedirs(f"{self.dir}/in")
        write(f"{self.dir}/in/poems", "\n%\n".join(POEMS) + "\n%\n")
        write(f"{self.dir}/in/english.txt", "\n%\n".join(ENGLISH[:30]))
        write(f"{self.dir}/in/more.jsonl",
              "".join(json.dumps({"id": i, "body": t, "tags": ["x", {"y": None}]}) + "\n"
                      for i, t in enumerate(ENGLISH[30:])))
        self.expected = sorted([strip_ansi(p) for p in POEMS] + ENGLISH)

    def prep(self, out, *extra):
        r = run_prep(f"--input={self.dir}/in/poems,{self.dir}/in/*.txt", f"{self.dir}/in/more.jsonl",
                     f"--output={out}", "--vocab_size=400", "--jsonl_field=body",
                     "--shard_tokens=700", "--val_fraction=0.2", *extra)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, "")
        return r

    def test_round_trip_and_format(self):
        out = f"{self.dir}/out"
        r = self.prep(out, "--threads=2")
        self.assertIn("MB/s", r.stdout)  # plain progress lines in a log
        train = sorted(glob.glob(f"{out}/train-*.h5"))
        val = sorted(glob.glob(f"{out}/val-*.h5"))
        self.assertGreater(len(train), 1)  # --shard_tokens=700 forces several shards
        self.assertGreaterEqual(len(val), 1)
        with open(f"{out}/tokenizer.model", "rb") as f:
            model = f.read()
        for p in train + val:
            with h5py.File(p, "r") as f:
                a = f.attrs
                self.assertEqual(a["format"], "samout-tokens")
                self.assertEqual(a["format_version"], 1)
                self.assertEqual(a["vocab_size"], 400)
                self.assertEqual((a["unk_id"], a["bos_id"], a["eos_id"], a["pad_id"]), (0, 1, 2, 3))
                self.assertEqual(a["tokenizer_kind"], "sentencepiece")
                tokens, offsets = f["tokens"], f["doc_offsets"][:]
                self.assertEqual(tokens.dtype, np.uint16)
                self.assertIsNotNone(tokens.chunks)
                self.assertLessEqual(tokens.shape[0], 700)
                self.assertEqual(a["num_tokens"], tokens.shape[0])
                self.assertEqual(a["num_docs"] + 1, len(offsets))
                self.assertEqual(offsets[0], 0)
                self.assertEqual(offsets[-1], tokens.shape[0])
                self.assertTrue(np.all(np.diff(offsets) > 0))
                self.assertLess(int(tokens[:].max()), 400)
                self.assertEqual(f["tokenizer"][:].tobytes(), model)
        # Decode with the model embedded in a shard, by SentencePiece's CLI, no code of ours.
        embedded = f"{self.dir}/embedded.model"
        with open(embedded, "wb") as f:
            f.write(h5py.File(train[0], "r")["tokenizer"][:].tobytes())
        train_docs = read_docs(train, eos=2)
        val_docs = read_docs(val, eos=2)
        self.assertGreater(len(val_docs), 0)
        decoded = sorted(spm_decode(embedded, d) for d in train_docs + val_docs)
        self.assertEqual(decoded, self.expected)

    def test_reused_tokenizer_and_thread_count_give_identical_tokens(self):
        self.prep(f"{self.dir}/a", "--threads=1")
        self.prep(f"{self.dir}/b", "--threads=3", f"--tokenizer={self.dir}/a/tokenizer.model")
        names = sorted(os.listdir(f"{self.dir}/a"))
        self.assertEqual(names, sorted(os.listdir(f"{self.dir}/b")))
        for n in names:
            if n.endswith(".h5"):
                with h5py.File(f"{self.dir}/a/{n}") as fa, h5py.File(f"{self.dir}/b/{n}") as fb:
                    np.testing.assert_array_equal(fa["tokens"][:], fb["tokens"][:])

    def test_format_flags(self):
        # Blank-line separated text with an unusual extension, colour codes kept, gzip, small chunks.
        write(f"{self.dir}/in/plain.data", "\n\n".join(["\x1b[1mbold\x1b[0m one"] + ENGLISH[:20]))
        out = f"{self.dir}/out"
        r = run_prep(f"--input={self.dir}/in/plain.data", f"--output={out}", "--vocab_size=400",
                     "--format=text", "--doc_separator=", "--strip_ansi=false", "--compression=4",
                     "--chunk_tokens=128", "--val_fraction=0", "--tokenizer_train_mb=1", "--seed=3",
                     "--progress=1")
        self.assertEqual(r.returncode, 0, r.stderr)
        # The terminal bar, redrawn in place ("\r" reads as "\n" in text mode), full at the end.
        self.assertIn("\x1b[Kencode [" + "#" * 30 + "]", r.stdout)
        with h5py.File(f"{out}/train-00000.h5") as f:
            tokens = f["tokens"]
            self.assertEqual(tokens.compression, "gzip")
            self.assertEqual(tokens.compression_opts, 4)
            self.assertEqual(tokens.chunks, (128,))
            self.assertEqual(f.attrs["num_docs"], 41)  # blank lines split paragraphs too
            with open(f"{self.dir}/m.model", "wb") as m:
                m.write(f["tokenizer"][:].tobytes())
            first = read_docs([f"{out}/train-00000.h5"], eos=2)[0]
        self.assertEqual(spm_decode(f"{self.dir}/m.model", first), "\x1b[1mbold\x1b[0m one")

    def test_rerun_replaces_stale_shards(self):
        out = f"{self.dir}/out"
        self.prep(out)
        before = len(glob.glob(f"{out}/train-*.h5"))
        r = run_prep(f"--input={self.dir}/in/poems", f"--output={out}", "--vocab_size=400",
                     "--val_fraction=0")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertGreater(before, 1)
        self.assertEqual(sorted(os.listdir(out)), ["tokenizer.model", "train-00000.h5"])


class PrepBadInputTest(TempDirTest):
    """Each case: exit 2, exactly one stderr line naming the file and problem, nothing written."""

    def setUp(self):
        super().setUp()
        write(f"{self.dir}/good.txt", "\n%\n".join(ENGLISH))

    def assert_bad(self, args, *fragments):
        out = f"{self.dir}/out"
        r = run_prep(*args, f"--output={out}", "--vocab_size=300")
        line = self.assert_one_error_line(r, *fragments, prefix="samout_prep: error: ")
        # Nothing written: no output directory and no temporary directory beside it.
        self.assertEqual(sorted(os.listdir(self.dir)),
                         sorted(n for n in os.listdir(self.dir) if not n.startswith("out")))
        return line

    def test_missing_file(self):
        self.assert_bad([f"--input={self.dir}/good.txt,{self.dir}/absent.txt"],
                        f"{self.dir}/absent.txt: no such file")

    def test_glob_matching_nothing(self):
        self.assert_bad([f"--input={self.dir}/*.jsonl"], f"{self.dir}/*.jsonl: glob matches no file")

    def test_empty_text_input(self):
        write(f"{self.dir}/empty.txt", "\n%\n   \n%\n")
        self.assert_bad([f"--input={self.dir}/good.txt,{self.dir}/empty.txt"],
                        f"{self.dir}/empty.txt: no documents (empty text input)")

    def test_unreadable_jsonl_line(self):
        write(f"{self.dir}/bad.jsonl",
              '{"text": "fine"}\n{"text": "also fine"}\n\n{"text": "broken\n')
        self.assert_bad([f"--input={self.dir}/good.txt,{self.dir}/bad.jsonl"],
                        f"{self.dir}/bad.jsonl:4: unreadable JSONL line")

    def test_unreadable_jsonl_line_with_given_tokenizer(self):
        # The encode pass alone must catch it too, after earlier files were already encoded.
        ok = run_prep(f"--input={self.dir}/good.txt", f"--output={self.dir}/tok", "--vocab_size=300")
        self.assertEqual(ok.returncode, 0, ok.stderr)
        os.rename(f"{self.dir}/tok/tokenizer.model", f"{self.dir}/t.model")
        subprocess.run(["rm", "-r", f"{self.dir}/tok"], check=True)
        write(f"{self.dir}/bad.jsonl", '{"text": "fine"}\n{"body": "no text field"}\n')
        self.assert_bad([f"--input={self.dir}/good.txt,{self.dir}/bad.jsonl",
                         f"--tokenizer={self.dir}/t.model"],
                        f"{self.dir}/bad.jsonl:2: unreadable JSONL line: no string field 'text'")

    def test_tokenizer_that_is_not_a_model(self):
        self.assert_bad([f"--input={self.dir}/good.txt", f"--tokenizer={self.dir}/good.txt"],
                        f"{self.dir}/good.txt: not a SentencePiece model")

    def test_input_is_a_directory(self):
        os.makedirs(f"{self.dir}/texts")
        self.assert_bad([f"--input={self.dir}/texts"], f"{self.dir}/texts: is a directory, not a file")

    def test_output_is_a_file(self):
        write(f"{self.dir}/out", "x")
        r = run_prep(f"--input={self.dir}/good.txt", f"--output={self.dir}/out")
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr.strip(), f"samout_prep: error: {self.dir}/out: exists and is not "
                                           "a directory")


def big_input(path, docs, seed=1):
    """Deterministic English-like text, one document per block, ~520 bytes a document."""
    import random
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    with open(path, "w") as f:
        for _ in range(docs):
            f.write(" ".join(rng.choice(words) + str(rng.randint(0, 999)) for _ in range(60)))
            f.write("\n%\n")


def host_tag():
    """The host part of samout_prep's temporary folder names: <output>.tmp-<host>-<pid>."""
    return re.sub(r"[^A-Za-z0-9._]", "_", socket.gethostname()) or "localhost"


class PrepEnvironmentTest(TempDirTest):
    """Full disks, signals, stale temporary folders, invalid UTF-8: real ones, no mocks."""

    def setUp(self):
        super().setUp()
        big_input(f"{self.dir}/a.txt", 3000)
        r = run_prep(f"--input={self.dir}/a.txt", f"--output={self.dir}/tok", "--vocab_size=300",
                     "--tokenizer_train_mb=1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.model = f"{self.dir}/tok/tokenizer.model"

    def test_full_disk_exits_1_with_one_line_and_leaves_nothing(self):
        prefix = private_mount_prefix(self.dir)
        if prefix is None:
            self.skipTest("cannot mount a tmpfs in a private mount namespace here")
        args = [f"--input={self.dir}/a.txt", f"--tokenizer={self.model}", "--progress=0"]
        full = run_prep(*args, f"--output={self.dir}/full")
        self.assertEqual(full.returncode, 0, full.stderr)
        need = sum(os.path.getsize(p) for p in glob.glob(f"{self.dir}/full/*"))
        disk = f"{self.dir}/disk"
        os.makedirs(disk)
        where = set()
        # From early (while tokens are written) to the last few KB (HDF5's final metadata flush,
        # where HDF5 1.10 used to leave a half-closed file that crashed its exit handler).
        for frac in (0.1, 0.5, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99):
            kb = max(16, int(need * frac) // 4096 * 4)
            r, left = run_on_tmpfs(prefix, disk, kb, [PREP, *args, f"--output={disk}/out"])
            self.assertNotEqual(r.returncode, 99, r.stderr)
            line = self.assert_one_error_line(r, "No space left on device", code=1,
                                              prefix="samout_prep: fatal: ", what=f"{kb} KB: ")
            self.assertRegex(line, r"out\.tmp-[^/]+/(train|val)-\d{5}\.h5: ")
            where.add("finish" if "cannot finish" in line else "write")
            self.assertEqual(left, "", f"{kb} KB: left behind")  # no temporary folder
        self.assertEqual(where, {"write", "finish"})

    def test_signal_removes_the_temporary_folder(self):
        big_input(f"{self.dir}/big.txt", 16000, seed=2)  # a few seconds of encoding
        for sig in (signal.SIGTERM, signal.SIGINT):
            out = f"{self.dir}/out"
            p = subprocess.Popen([PREP, f"--input={self.dir}/big.txt", f"--tokenizer={self.model}",
                                  f"--output={out}", "--progress=0", "--threads=2"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            deadline = time.time() + 60
            while not glob.glob(f"{out}.tmp-*/train-*.h5") and time.time() < deadline:
                self.assertIsNone(p.poll(), "finished before it could be interrupted")
                time.sleep(0.02)
            p.send_signal(sig)
            _, err = p.communicate(timeout=60)
            self.assertEqual(p.returncode, -sig, err)  # died of the signal, as a shell expects
            self.assertEqual(err, "")
            self.assertEqual(sorted(n for n in os.listdir(self.dir) if n.startswith("out")), [])

    def test_stale_temporary_folders_of_dead_processes_are_cleared(self):
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale = f"{self.dir}/out.tmp-{host_tag()}-{dead.pid}"
        alive = f"{self.dir}/out.tmp-{host_tag()}-{os.getpid()}"
        elsewhere = f"{self.dir}/out.tmp-otherhost-{dead.pid}"
        for d in (stale, alive, elsewhere):
            os.makedirs(d)
            write(f"{d}/train-00000.h5", "half-written")
        r = run_prep(f"--input={self.dir}/a.txt", f"--tokenizer={self.model}",
                     f"--output={self.dir}/out")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(os.path.exists(stale))
        self.assertIn(f"removed {stale}, left by process {dead.pid}", r.stdout)
        self.assertTrue(os.path.exists(alive))      # its process is running: in use
        self.assertTrue(os.path.exists(elsewhere))  # another host's process: may be in use

    def test_invalid_utf8_is_replaced_with_a_warning(self):
        path = f"{self.dir}/bad.txt"
        with open(path, "wb") as f:
            f.write(b"bad \xff\xfe bytes and a stray \x80 here\n%\n")
            with open(f"{self.dir}/a.txt", "rb") as good:
                f.write(good.read()[:20000])
        out = f"{self.dir}/out"
        r = run_prep(f"--input={path}", f"--tokenizer={self.model}", f"--output={out}",
                     "--val_fraction=0")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr.splitlines(),
                         [f"samout_prep: warning: {path}: 3 bytes of invalid UTF-8 replaced by U+FFFD"])
        first = read_docs([f"{out}/train-00000.h5"], eos=2)[0]
        self.assertEqual(spm_decode(self.model, first), "bad \ufffd\ufffd bytes and a stray \ufffd here")


if __name__ == "__main__":
    unittest.main()
