#!/usr/bin/env python3
"""Context parallelism on the CPU: peak memory per rank and step time, N = 1 against N = 2.

One sequence length T is trained by one rank holding whole sequences (-np 1) and by two ranks
holding half of every sequence each (-np 2 --context_parallel=2), on the same global batch, in the
same invocation. Printed per run: median step time over the steps after --warmup, and rank 0's
peak resident memory (the metrics' peak_rss_mb). A short run at --base_len gives the memory that
does not depend on T (libraries, weights, optimizer state), so the activation part is
peak - base; with N = 2 it should about halve. The step-time ratio shows the cost of the
exchange (one all-gather of [B, d] per layer each way) on top of halving each rank's work.

    .venv/bin/python bench/train/bench_context_parallel.py --build=build --seq_len=16384
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def run(exe, n, cp, seq_len, args, tmp):
    m = os.path.join(tmp, f"n{n}-cp{cp}-t{seq_len}.jsonl")
    cmd = (["mpirun", "--oversubscribe", "-np", str(n)] if n > 1 else []) + [
        exe, "--device=cpu", f"--seq_len={seq_len}", f"--context_parallel={cp}", "--log_every=1",
        f"--steps={args.steps}", f"--batch_size={args.batch_size}", f"--hidden={args.hidden}",
        f"--layers={args.layers}", "--heads=8", f"--vocab_size={args.vocab_size}",
        "--data=random:1", "--threads=1", f"--metrics_file={m}"]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench_context_parallel: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    rows = [json.loads(l) for l in open(m)]
    steps = [r for r in rows if "loss" in r][args.warmup:]
    return statistics.median(r["step_ms"] for r in steps), rows[-1]["peak_rss_mb"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--seq_len", type=int, default=16384)
    ap.add_argument("--base_len", type=int, default=256)
    ap.add_argument("--batch_size", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab_size", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    exe = os.path.join(args.build, "bin", "samout_ddp")
    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        for n in (1, 2):
            base_ms, base_mb = run(exe, n, n, args.base_len, args, tmp)
            ms, mb = run(exe, n, n, args.seq_len, args, tmp)
            res[n] = (ms, mb, base_mb)
            print(f"N={n}: T={args.seq_len} B={args.batch_size} d={args.hidden} L={args.layers}: "
                  f"{ms:.0f} ms/step, peak RSS {mb:.0f} MB per rank "
                  f"({mb - base_mb:.0f} MB above the T={args.base_len} run's {base_mb:.0f} MB)")
    (ms1, mb1, b1), (ms2, mb2, b2) = res[1], res[2]
    print(f"N=2 / N=1: peak memory per rank {mb2 / mb1:.2f}x, T-dependent part "
          f"{(mb2 - b2) / max(mb1 - b1, 1e-9):.2f}x; step time {ms2 / ms1:.2f}x")


if __name__ == "__main__":
    main()
