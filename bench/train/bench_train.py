#!/usr/bin/env python3
"""samout_ddp against the seed's PyTorch loop (pytorch_seed_loop.py) on the CPU, in one invocation.

Both run the same model, batch, sequence length, optimizer (Adam, constant lr), thread count and
number of steps, on uniform random tokens; tokens/s is taken over the steps after --warmup:
  1. one process each: samout_ddp --threads=N  vs  PyTorch with N threads   (N = --threads)
  2. --ranks ranks: mpirun -np R samout_ddp --threads=1  vs  PyTorch with R threads
and the ratio samout/pytorch is printed for each. Defaults are configs/seed.flags' values.

    .venv/bin/python bench/train/bench_train.py --build=build-bench            # seed setting
    .venv/bin/python bench/train/bench_train.py --hidden=128 --layers=2 --vocab_size=1000 --steps=10
    ... --ranks=0    skips the multi-rank comparison; --profile also prints torch.profiler's table

samout's tokens/s comes from its --metrics_file (log_every=1): the tokens of the measured steps over
the sum of their step_ms. Its per-phase times (data, compute, comm wait, optimizer) are printed too.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_KEYS = ["vocab_size", "hidden", "layers", "heads", "seq_len", "batch_size", "lr"]
FALLBACK = {"vocab_size": 8460, "hidden": 512, "layers": 8, "heads": 8, "seq_len": 49,
            "batch_size": 32, "lr": 1e-3}


def seed_defaults():
    """The model and batch of configs/seed.flags or the seed's own (docs/model.md) if absent."""
    vals = dict(FALLBACK)
    path = os.path.join(ROOT, "configs", "seed.flags")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                m = re.match(r"^--(\w+)=(\S+)", line.strip())
                if m and m.group(1) in vals:
                    vals[m.group(1)] = type(FALLBACK[m.group(1)])(float(m.group(2)))
    return vals


def parse_args():
    d = seed_defaults()
    p = argparse.ArgumentParser(description="samout_ddp vs the seed's PyTorch loop, CPU tokens/s")
    for k in MODEL_KEYS:
        p.add_argument("--" + k, type=type(FALLBACK[k]), default=d[k])
    p.add_argument("--steps", type=int, default=20, help="measured steps")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps first")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of the 1-process runs")
    p.add_argument("--ranks", type=int, default=2 if os.cpu_count() >= 2 else 0,
                   help="ranks of the mpirun comparison (1 thread each); 0 skips it")
    p.add_argument("--build", default=os.environ.get("SAMOUT_BUILD", os.path.join(ROOT, "build")),
                   help="build folder holding bin/samout_ddp")
    p.add_argument("--gate", default="auto", help="samout_ddp --gate")
    p.add_argument("--zero", type=int, default=0,
                   help="samout_ddp --zero of the multi-rank run (1: each rank updates its shard)")
    p.add_argument("--python", default=sys.executable, help="interpreter with torch for the baseline")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's table (PyTorch side)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate samout and PyTorch this many times; the median ratio is reported")
    p.add_argument("--keep", default="", help="keep samout's metrics files in this folder")
    p.add_argument("--samout_flags", default="",
                   help="extra samout_ddp flags, space-separated (e.g. --zero=1)")
    p.add_argument("--samout_env", default="",
                   help="extra environment of the samout runs only, space-separated K=V pairs")
    return p.parse_args()


def run(cmd, log_path, env=None):
    with open(log_path, "w") as log:
        r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if r.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        sys.exit(f"bench_train: failed ({r.returncode}): {' '.join(cmd)}\n{tail}")


def run_samout(args, ranks, threads, workdir, tag):
    exe = os.path.join(args.build, "bin", "samout_ddp")
    metrics = os.path.join(workdir, f"samout_{tag}.jsonl")
    flags = [exe, "--data=random:0", "--device=cpu", "--optimizer=adam", "--lr_schedule=constant",
             f"--vocab_size={args.vocab_size}", f"--hidden={args.hidden}", f"--layers={args.layers}",
             f"--heads={args.heads}", f"--seq_len={args.seq_len}", f"--batch_size={args.batch_size}",
             f"--lr={args.lr}", f"--steps={args.warmup + args.steps}", "--log_every=1",
             f"--threads={threads}", f"--gate={args.gate}", f"--metrics_file={metrics}"]
    if ranks > 0:
        flags.append(f"--zero={args.zero}")
    flags += args.samout_flags.split()
    cmd = flags if ranks == 0 else (
        ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(ranks)]
        + [x for kv in args.samout_env.split() for x in ("-x", kv.split("=", 1)[0])] + flags)
    print("+ " + " ".join(cmd), flush=True)
    env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.samout_env.split()))
    run(cmd, os.path.join(workdir, f"samout_{tag}.log"), env)
    rows = []
    with open(metrics) as f:
        for line in f:
            j = json.loads(line)
            if "loss" in j and j.get("step", 0) > args.warmup:
                rows.append(j)
    if len(rows) != args.steps:
        sys.exit(f"bench_train: expected {args.steps} measured rows in {metrics}, got {len(rows)}")
    step_ms = sum(r["step_ms"] for r in rows) / len(rows)
    res = {"tokens_per_s": args.batch_size * args.seq_len / (step_ms / 1000), "step_ms": step_ms,
           "loss": rows[-1]["loss"]}
    for k in ["data_ms", "compute_ms", "comm_wait_ms", "optimizer_ms"]:
        res[k] = sum(r.get(k, 0.0) for r in rows) / len(rows)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        shutil.copy(metrics, args.keep)
    return res


def run_pytorch(args, threads, workdir, tag):
    cmd = [args.python, os.path.join(HERE, "pytorch_seed_loop.py")] + [
        f"--{k}={getattr(args, k)}" for k in MODEL_KEYS] + [
        f"--steps={args.steps}", f"--warmup={args.warmup}", f"--threads={threads}"]
    if args.profile:
        cmd.append("--profile=3")
    print("+ " + " ".join(cmd), flush=True)
    log = os.path.join(workdir, f"pytorch_{tag}.log")
    run(cmd, log)
    with open(log) as f:
        text = f.read()
    if args.profile:
        print(text)
    return json.loads(text.strip().splitlines()[-1])


def report(label, s, p):
    print(f"{label}: samout {s['tokens_per_s']:.0f} tok/s ({s['step_ms']:.1f} ms/step: data "
          f"{s['data_ms']:.1f}, compute {s['compute_ms']:.1f}, comm wait {s['comm_wait_ms']:.1f}, "
          f"optim {s['optimizer_ms']:.1f}) | pytorch {p['tokens_per_s']:.0f} tok/s "
          f"({p['step_ms']:.1f} ms/step) | samout/pytorch {s['tokens_per_s'] / p['tokens_per_s']:.2f}x",
          flush=True)


def main():
    args = parse_args()
    print(f"bench_train: V={args.vocab_size} d={args.hidden} L={args.layers} h={args.heads} "
          f"batch {args.batch_size} x {args.seq_len}, Adam lr {args.lr}, {args.warmup} warmup + "
          f"{args.steps} measured steps, {args.rounds} round(s)", flush=True)
    # Rounds alternate samout and PyTorch, so a drift in the shared machine's speed (it moves by
    # 20 % within minutes) lands on both sides of each ratio; the median ratio is the figure.
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as work:
        for r in range(args.rounds):
            s1 = run_samout(args, 0, args.threads, work, f"1x{args.threads}_{r}")
            p1 = run_pytorch(args, args.threads, work, f"{args.threads}t_{r}")
            results = [(f"1 process, {args.threads} threads", s1, p1)]
            if args.ranks > 0:
                s2 = run_samout(args, args.ranks, 1, work, f"{args.ranks}x1_{r}")
                p2 = p1 if args.ranks == args.threads else run_pytorch(args, args.ranks, work,
                                                                       f"{args.ranks}t_{r}")
                results.append((f"{args.ranks} ranks x 1 thread (zero={args.zero}) vs PyTorch "
                                f"{args.ranks} threads", s2, p2))
            for label, s, p in results:
                report(f"round {r + 1}: {label}", s, p)
                ratios.setdefault(label, []).append(s["tokens_per_s"] / p["tokens_per_s"])
    for label, rs in ratios.items():
        rs = sorted(rs)
        print(f"median over {len(rs)} round(s): {label}: samout/pytorch {rs[len(rs) // 2]:.2f}x "
              f"(range {rs[0]:.2f}-{rs[-1]:.2f})", flush=True)


if __name__ == "__main__":
    main()
