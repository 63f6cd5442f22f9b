"""launch/plot_metrics on a synthetic metrics file: a valid, non-empty PNG comes out; a missing
file and a file that is not JSON exit 2 with one line on stderr, and write nothing.

    python tests/tools/test_plot_metrics.py          (ctest runs it with ${SAMOUT_PYTHON})
"""
import json
import math
import os
import struct
import sys
import unittest
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from harness import ROOT, TempDirTest, run, write  # noqa: E402

TOOL = os.path.join(ROOT, "launch", "plot_metrics")


def run_tool(*args):
    return run([sys.executable, TOOL, *args], expect=None, timeout=120)


def check_png(test, path):
    """A PNG signature, an IHDR with a sane size, chunks whose CRCs match, and an IEND."""
    with open(path, "rb") as f:
        data = f.read()
    test.assertGreater(len(data), 1000)
    test.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
    pos, kinds = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        test.assertEqual(zlib.crc32(kind + body) & 0xFFFFFFFF, crc, f"bad CRC in {kind}")
        kinds.append(kind)
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
            test.assertTrue(100 < w < 5000 and 100 < h < 5000, (w, h))
        pos += 12 + n
    test.assertEqual(kinds[0], b"IHDR")
    test.assertEqual(kinds[-1], b"IEND")
    test.assertIn(b"IDAT", kinds)


class PlotMetricsTest(TempDirTest):
    def write_metrics(self, name, steps=50, partial_tail=False):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            for s in range(1, steps + 1):
                row = {"step": s, "loss": 9.0 * math.exp(-s / 20) + 1, "lr": 1e-3 * min(1, s / 10),
                       "grad_norm": 1.0, "tokens_per_s": 5000 + 10 * s, "step_ms": 300.0}
                if s == 3:
                    row["grad_norm"] = None  # a non-finite value, as samout_ddp writes it
                f.write(json.dumps(row) + "\n")
                if s % 10 == 0:
                    f.write(json.dumps({"step": s, "val_loss": 9.5 * math.exp(-s / 20) + 1,
                                        "val_batches": 8}) + "\n")
            f.write("\n")
            f.write(json.dumps({"final": True, "steps": steps, "wall_s": 15.0,
                                "mean_tokens_per_s": 5200.0}) + "\n")
            if partial_tail:
                f.write('{"step": 51, "lo')  # a run still being written
        return path

    def test_one_file(self):
        out = os.path.join(self.dir, "m.png")
        r = run_tool(self.write_metrics("a.jsonl"), "--output", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        check_png(self, out)

    def test_two_files_and_partial_last_line(self):
        out = os.path.join(self.dir, "m2.png")
        r = run_tool(self.write_metrics("a.jsonl"), self.write_metrics("b.jsonl", 30, True),
                     "--output", out, "--title", "two runs")
        self.assertEqual(r.returncode, 0, r.stderr)
        check_png(self, out)

    def assert_usage_error(self, r, out, needle):
        self.assert_one_error_line(r, needle)
        self.assertFalse(os.path.exists(out))

    def test_missing_file(self):
        out = os.path.join(self.dir, "x.png")
        r = run_tool(os.path.join(self.dir, "nope.jsonl"), "--output", out)
        self.assert_usage_error(r, out, "nope.jsonl")

    def test_not_json(self):
        bad = write(os.path.join(self.dir, "bad.jsonl"),
                    '{"step": 1, "loss": 2.0}\nthis is not json\n')
        out = os.path.join(self.dir, "x.png")
        r = run_tool(bad, "--output", out)
        self.assert_usage_error(r, out, "bad.jsonl:2")

    def test_no_metric_rows(self):
        empty = write(os.path.join(self.dir, "empty.jsonl"), '{"final": true}\n')
        out = os.path.join(self.dir, "x.png")
        r = run_tool(empty, "--output", out)
        self.assert_usage_error(r, out, "no metrics rows")


if __name__ == "__main__":
    unittest.main()
