"""samout_ddp end to end, with real processes under a real mpirun (CPU ranks).

    python tests/train/test_ddp.py CASE --bin build/bin/samout_ddp [--sample data/sample]

Cases (each a ctest of its own, see tests/train/CMakeLists.txt):
  world_size   1 rank and 2 ranks at the same global batch and seed: same loss at every one of 20
               steps (relative difference <= 1e-5) and the same final weights
  accumulation 4 micro-steps of 2 sequences equal 1 step of 8
  loss_falls   the loss falls on the sample corpus within a short run, and validation runs
  bad_flags    each bad flag: exit code 2 and exactly one error line, before any work
  rank_killed  SIGKILL of one rank mid-run brings the whole job down (no hang)
  big_flags_resume  configs/big.flags saves checkpoints, and the same command resumes from them
  ranks_disagree    ranks given different --lr or --hidden (mpirun's a : b) exit 2 naming the flag;
               rank-local flags (--threads) may differ
  half_written --save_weights or samout_export --output naming a directory or a full disk, and
               --init_from naming a directory or /dev/zero: exit 2 before any work, nothing left
  context_parallel  -np 2 --context_parallel=2 against -np 1 (losses 1e-6, weights 1e-5, with and
               without ZeRO-1), and a checkpoint saved with --context_parallel=2 resumed with 1
  context_data_parallel  -np 4 --comm=mpi as 2 data- x 2 context-parallel against -np 2 data-parallel
               (losses 1e-6, weights 1e-5, with and without ZeRO-1); the gradient buckets are
               launched after backward (the order that is deadlock-free on NCCL)
  zero_world_sizes  ZeRO-1 (a reduce-scatter per bucket, several buckets) at 2 and 3 ranks against
               1 rank: losses 1e-5; and comm_mb, the MB a rank sends per step, is one all-reduce's
               (2 (W-1)/W 4 P bytes for P parameters) with ZeRO-1 as without, not 1.5 times it

GPU cases (ctest label gpu; exit 77, reported as skipped, where torch sees no CUDA device):
  gpu_cpu_parity     5 fp32 steps of a tiny model on the CPU and on the GPU: losses within 1e-4
  gpu_bf16_falls     bf16 autocast on the sample corpus: the loss is finite and falls
  gpu_sync_free      steps under CUDA's sync-debug mode set to error (--debug_sync_check): no
                     hidden host sync in a step, with gradient clipping, a NaN step skipped,
                     gradient accumulation, fp32 and bf16
  gpu_mpi_two_ranks  mpirun -np 2 --comm=mpi on one GPU against 1 rank: losses within 1e-5 (fp32),
                     with and without ZeRO-1
"""
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from harness import (ROOT, TINY_MODEL, case_parser, child_pids, expect_error,  # noqa: E402
                     losses, metrics, private_mount_prefix, run, run_case, run_on_tmpfs,
                     skip, spawn, weights)

# --device=cpu: these cases check CPU ranks even where a GPU exists (GPU cases: tests labelled gpu).
TINY = ["--device=cpu", "--data=random:3"] + TINY_MODEL + ["--log_every=1", "--threads=1"]


def train(binary, tmp, name, extra, n=1):
    m, w = os.path.join(tmp, name + ".jsonl"), os.path.join(tmp, name + ".h5")
    run([binary] + TINY + extra + [f"--metrics_file={m}", f"--save_weights={w}"], n=n)
    return metrics(m)[0], weights(w)


def same_run(a, b, what):
    (la, wa), (lb, wb) = a, b
    assert len(la) == len(lb) == 20, (what, len(la), len(lb))
    worst = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(la, lb))
    print(f"{what}: max relative loss difference over {len(la)} steps: {worst:.3g}")
    assert worst <= 1e-5, f"{what}: losses differ by {worst}"
    assert wa.keys() == wb.keys() and len(wa) == 2 + 15 * 2
    for k in wa:
        diff = np.abs(wa[k] - wb[k]).max()
        assert np.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5), f"{what}: {k} differs by {diff}"
    # And the runs did train: the weights moved away from the start.
    assert la[-1]["loss"] < la[0]["loss"], "loss did not fall"


def case_world_size(a, tmp):
    one = train(a.bin, tmp, "w1", ["--batch_size=8", "--steps=20"], n=1)
    two = train(a.bin, tmp, "w2", ["--batch_size=8", "--steps=20"], n=2)
    same_run(one, two, "1 rank vs 2 ranks")


def case_accumulation(a, tmp):
    whole = train(a.bin, tmp, "mb8", ["--batch_size=8", "--micro_batch=8", "--steps=20"])
    accum = train(a.bin, tmp, "mb2", ["--batch_size=8", "--micro_batch=2", "--steps=20"])
    same_run(whole, accum, "1 step of 8 vs 4 micro-steps of 2")


def case_loss_falls(a, tmp):
    m = os.path.join(tmp, "sample.jsonl")
    run([a.bin, "--device=cpu", f"--data={a.sample}/train-*.h5", f"--val_data={a.sample}/val-*.h5", "--hidden=64",
         "--layers=2", "--heads=4", "--seq_len=32", "--batch_size=16", "--steps=60", "--lr=3e-3",
         "--log_every=5", "--eval_every=30", "--eval_batches=2", f"--metrics_file={m}"], n=2)
    train_rows, val_rows, final = metrics(m)
    first, last = train_rows[0]["loss"], train_rows[-1]["loss"]
    print(f"sample corpus: loss {first:.3f} -> {last:.3f}; val {[round(v['val_loss'], 3) for v in val_rows]}")
    assert last < first - 1.0, (first, last)
    assert len(val_rows) == 2 and val_rows[-1]["val_loss"] < val_rows[0]["val_loss"] + 0.5
    assert final.get("final") and final["tokens"] == 60 * 16 * 32
    for key in ("step", "loss", "lr", "tokens_per_s", "grad_norm", "eta_s"):
        assert key in train_rows[-1], key


def case_bad_flags(a, tmp):
    with h5py.File(os.path.join(a.sample, "train-00000.h5")) as f:
        sample_vocab = int(f.attrs["vocab_size"])
    cases = [
        (2, ["--batch_size=6", "--micro_batch=2"], "not divisible by world size 2 x --micro_batch=2"),
        (2, ["--batch_size=7"], "--batch_size=7 is not divisible by the world size 2"),
        (1, ["--hidden=50", "--heads=4"], "--hidden=50 is not divisible by --heads=4"),
        (2, ["--precision=bf16", "--device=cpu"], "--precision=bf16 is not supported on the CPU"),
        (1, [f"--data={a.sample}/train-*.h5", f"--vocab_size={sample_vocab + 1}"],
         f"vocab_size {sample_vocab} differs from the requested {sample_vocab + 1}"),
        (2, ["--data=/nonexistent/*.h5"], "/nonexistent/*.h5"),
        (1, ["--optimizer=sgd"], "--optimizer must be adam or adamw"),
        (1, ["--steps=-1"], "--steps"),
        (2, ["--comm=nccl"], "--comm=nccl needs CUDA devices"),
        (1, ["--comm=gloo"], "--comm must be auto, nccl or mpi"),
        (2, ["--comm_timeout_s=0"], "--comm_timeout_s must be a positive number"),
        (1, ["--comm_timeout_s=nan"], "--comm_timeout_s must be a positive number"),
        (2, ["--context_parallel=3"], "--context_parallel=3 does not divide the world size 2"),
        (2, ["--context_parallel=2", "--seq_len=25"], "--context_parallel=2 does not divide --seq_len=25"),
        (1, ["--context_parallel=0"], "--context_parallel must be positive"),
        # Parsing: an unknown flag or a wrong type (exit 2 under mpirun too, one line for the job).
        (2, ["--hiden=64"], "unknown flag --hiden"),
        (1, ["--hidden=sixty"], "--hidden=sixty: 'sixty' is not an integer"),
        # Every numeric flag's range: these all trained (or hung) before.
        (1, ["--lr=inf"], "--lr must be a finite number > 0, got inf"),
        (1, ["--eps=nan"], "--eps must be a finite number >= 0, got nan"),
        (1, ["--weight_decay=nan"], "--weight_decay must be a finite number >= 0, got nan"),
        (1, ["--min_lr=nan"], "--min_lr must be in [0, --lr="),
        (1, ["--lr=0.1", "--min_lr=0.5"], "--min_lr must be in [0, --lr=0.1], got 0.5"),
        (1, ["--beta1=2"], "--beta1 must be in [0, 1), got 2"),
        (1, ["--beta2=-0.5"], "--beta2 must be in [0, 1), got -0.5"),
        (1, ["--grad_clip=-1"], "--grad_clip must be a finite number >= 0"),
        (1, ["--grad_clip=nan"], "--grad_clip must be a finite number >= 0"),
        (1, ["--warmup_steps=-5"], "--warmup_steps must be >= 0, got -5"),
        (1, ["--eval_every=-1"], "--eval_every must be >= 0, got -1"),
        (1, [f"--val_data={a.sample}/val-*.h5", "--vocab_size=0", f"--data={a.sample}/train-*.h5",
             "--eval_batches=0"], "--eval_batches must be >= 1 with --val_data, got 0"),
        (1, ["--threads=-1"], "--threads must be in [0, 1024], got -1"),
        (1, ["--threads=100000"], "--threads must be in [0, 1024], got 100000"),
        (2, ["--comm_timeout_s=-3"], "--comm_timeout_s must be a positive number"),
        (1, ["--comm_timeout_s=inf"], "--comm_timeout_s must be a positive number"),
    ]
    for n, flags, expect in cases:
        m = os.path.join(tmp, "bad.jsonl")
        args = [a.bin] + TINY + ["--batch_size=8", "--steps=5"] + flags + [f"--metrics_file={m}"]
        p = run(args, n=n, expect=None, timeout=60)
        expect_error(p, expect, what=f"{n} rank(s) {' '.join(flags)}")
        assert not os.path.exists(m), "a metrics file was written for a bad run"


def case_rank_killed(a, tmp):
    p = spawn([a.bin] + TINY + ["--batch_size=8", "--steps=100000", "--log_every=1000",
                                "--comm_timeout_s=20"], n=2)
    time.sleep(4)
    ranks = child_pids(p.pid, "samout_ddp")
    assert len(ranks) == 2, f"expected 2 ranks under mpirun, found {ranks}"
    os.kill(ranks[1], signal.SIGKILL)
    t0 = time.time()
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        sys.exit("FAIL: the job hung after a rank was killed")
    print(f"job ended {time.time() - t0:.1f}s after the kill, exit {p.returncode}")
    assert p.returncode != 0


def max_weight_diff(wa, wb):
    assert wa.keys() == wb.keys()
    return max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)


def case_context_parallel(a, tmp):
    """Sequences split over ranks (--context_parallel) train as if whole."""
    base = ["--batch_size=8", "--steps=10"]
    for zero in ("0", "1"):
        one = train(a.bin, tmp, f"one{zero}", base + [f"--zero={zero}"])
        cp2 = train(a.bin, tmp, f"cp2{zero}", base + [f"--zero={zero}", "--context_parallel=2"], n=2)
        close([r["loss"] for r in cp2[0]], [r["loss"] for r in one[0]], 1e-6,
              f"-np 2 --context_parallel=2 vs -np 1, --zero={zero}")
        worst = max_weight_diff(one[1], cp2[1])
        print(f"  final weights: largest difference {worst:.2e}")
        assert worst <= 1e-5, worst
    # Saved with --context_parallel=2, resumed with 1 (and the same global batches follow).
    ck, m = os.path.join(tmp, "ck"), os.path.join(tmp, "resumed.jsonl")
    run([a.bin] + TINY + ["--batch_size=8", "--steps=5", "--context_parallel=2", f"--ckpt_dir={ck}"], n=2)
    run([a.bin] + TINY + ["--batch_size=8", "--steps=10", f"--ckpt_dir={ck}", f"--metrics_file={m}"])
    resumed = losses(m)
    whole = {r["step"]: r["loss"] for r in one[0]}
    assert sorted(resumed) == list(range(6, 11)), sorted(resumed)
    close([resumed[k] for k in sorted(resumed)], [whole[k] for k in sorted(resumed)], 1e-5,
          "saved at --context_parallel=2, resumed at 1, vs never split")


def case_context_data_parallel(a, tmp):
    """2 data- x 2 context-parallel ranks train as 2 data-parallel ones (the gate's group all-gathers
    inside backward, the world's gradient collectives after it)."""
    base = ["--batch_size=8", "--steps=6", "--comm=mpi"]
    for zero in ("0", "1"):
        dp2 = train(a.bin, tmp, f"dp2{zero}", base + [f"--zero={zero}"], n=2)
        m, w = os.path.join(tmp, f"cp{zero}.jsonl"), os.path.join(tmp, f"cp{zero}.h5")
        p = run([a.bin] + TINY + base + [f"--zero={zero}", "--context_parallel=2",
                                         f"--metrics_file={m}", f"--save_weights={w}"], n=4)
        assert "2 data-parallel x 2 context-parallel" in p.stderr, p.stderr[-3000:]
        assert "launched after backward" in p.stderr, p.stderr[-3000:]
        close([r["loss"] for r in metrics(m)[0]], [r["loss"] for r in dp2[0]], 1e-6,
              f"-np 4 (2 data- x 2 context-parallel) vs -np 2 data-parallel, --zero={zero}")
        worst = max_weight_diff(dp2[1], weights(w))
        print(f"  final weights: largest difference {worst:.2e}")
        assert worst <= 1e-5, worst


def case_zero_world_sizes(a, tmp):
    """ZeRO-1 reduce-scatters the gradients: the same losses at 1, 2 and 3 ranks, and the bytes of
    one all-reduce per step."""
    # 604,140 parameters: 2 buckets of about 1 MB, the second across the shard boundary (at 3 ranks
    # the first too).
    base = ["--batch_size=12", "--steps=6", "--vocab_size=6000", "--bucket_mb=1"]
    one = train(a.bin, tmp, "one", base)[0]
    p = run([a.bin] + TINY + base + ["--steps=1"], n=1)
    params = int(re.search(r"(\d+) parameters", p.stderr).group(1))
    for n, zero in ((2, "0"), (2, "1"), (3, "1")):
        rows = train(a.bin, tmp, f"w{n}z{zero}", base + [f"--zero={zero}"], n=n)[0]
        close([r["loss"] for r in rows], [r["loss"] for r in one], 1e-5,
              f"-np {n} --zero={zero} vs -np 1")
        share = (n - 1) / n
        padded = -(-params // n) * n
        # Gradients, then (ZeRO-1) the parameters and the squared gradient norm (one double).
        want = (8 * share * params if zero == "0" else 4 * share * (params + padded) + 16 * share) / 1e6
        got = [r["comm_mb"] for r in rows]
        print(f"  comm_mb per step {got[0]:.6f} (expected {want:.6f}; an all-reduce alone is "
              f"{8 * share * params / 1e6:.6f})")
        assert all(abs(g - want) <= 1e-9 * want for g in got), (got, want)


def case_big_flags_resume(a, tmp):
    """configs/big.flags checkpoints by default: rerunning the same command resumes by itself."""
    flags = os.path.join(ROOT, "configs", "big.flags")
    small = ["--device=cpu", "--precision=fp32", "--data=random:2", "--val_data=", "--vocab_size=300",
             "--hidden=32", "--layers=1", "--heads=4", "--seq_len=16", "--batch_size=4",
             "--micro_batch=0", "--warmup_steps=0", "--ckpt_every=2", "--threads=1"]
    cmd = [a.bin, f"--flagfile={os.path.abspath(flags)}"] + small
    run(cmd + ["--steps=3"], cwd=tmp, timeout=120)
    ckpts = sorted(os.listdir(os.path.join(tmp, "runs", "big", "ckpt")))
    assert "step_00000003" in ckpts, ckpts
    p = run(cmd + ["--steps=5"], cwd=tmp, timeout=120)
    assert "resumed from runs/big/ckpt/step_00000003 at step 3" in p.stderr, p.stderr[-3000:]
    print("configs/big.flags: saved into runs/big/ckpt, and the rerun resumed at step 3")


def mpmd(per_rank):
    """mpirun with one command line per rank (MPMD: `-np 1 A : -np 1 B`)."""
    cmd = ["mpirun", "--oversubscribe"]
    for i, args in enumerate(per_rank):
        cmd += ([":"] if i else []) + ["-np", "1"] + args
    return run(cmd, expect=None, timeout=120)


def case_ranks_disagree(a, tmp):
    """Ranks given different run-shaping flags stop at start-up, naming the first that differs."""
    base = [a.bin] + TINY + ["--batch_size=8", "--steps=3"]
    for rank1, expect in [
        (["--lr=0.002"], "--lr=0.002 differs from rank 0's --lr=0.001"),     # diverging replicas
        (["--hidden=64"], "--hidden=64 differs from rank 0's --hidden=48"),  # MPI_ERR_TRUNCATE
        (["--bogus=1"], "rank 1: unknown flag --bogus"),                      # only rank 1's is bad
    ]:
        m = os.path.join(tmp, "disagree.jsonl")
        p = mpmd([base + ["--lr=0.001", f"--metrics_file={m}"], base + ["--lr=0.001"] + rank1])
        expect_error(p, expect, what=f"rank 1 given {rank1}")
        assert not os.path.exists(m), "a metrics file was written"
    # Rank-local flags may differ: threads, prefetch, the metrics file.
    m = os.path.join(tmp, "local.jsonl")
    p = mpmd([base + ["--threads=1", f"--metrics_file={m}"], base + ["--threads=2", "--prefetch=1"]])
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(metrics(m)[0]) == 3
    print("rank-local flags (--threads, --prefetch, --metrics_file) may differ: trained 3 steps")


def expect_refused(args, expect, n=1, program="samout_ddp"):
    p = run(args, n=n, expect=None, timeout=120)
    expect_error(p, expect, program, what=" ".join(args[-2:]))


def leftovers(folder):
    return [f for f in os.listdir(folder) if f.endswith((".tmp", ".part"))]


def case_half_written(a, tmp):
    """Outputs that cannot be written, and inputs that are not files, are refused before training."""
    export = os.path.join(os.path.dirname(a.bin), "samout_export")
    base = [a.bin] + TINY + ["--batch_size=8", "--steps=2"]
    outdir = os.path.join(tmp, "out")
    os.makedirs(outdir)
    m = os.path.join(tmp, "m.jsonl")
    expect_refused(base + [f"--metrics_file={m}", f"--save_weights={outdir}"], "is a directory", n=2)
    expect_refused(base + [f"--save_weights={outdir}/"], "is a directory")
    expect_refused(base + ["--init_from=/dev/zero"], "not a regular file")
    expect_refused(base + [f"--init_from={outdir}"], "is a directory")
    assert not os.path.exists(m) and os.listdir(outdir) == [], "something was written"
    # A real checkpoint to export.
    ck = os.path.join(tmp, "ck")
    run(base + [f"--ckpt_dir={ck}"])
    expect_refused([export, f"--checkpoint={ck}", f"--output={outdir}"], "is a directory",
                   program="samout_export")
    assert os.listdir(outdir) == []
    prefix = private_mount_prefix(tmp)
    if prefix is None:
        print("SKIP (full disk): cannot mount a tmpfs in a private mount namespace here")
        return
    # A 64 KB filesystem cannot take the weights (about 300 KB): refused at start-up, not after
    # training, and nothing is left on it.
    disk = os.path.join(tmp, "disk")
    os.makedirs(disk)
    for program, args in [("samout_ddp", base + [f"--save_weights={disk}/w.h5"]),
                          ("samout_export", [export, f"--checkpoint={ck}", f"--output={disk}/w.pt"]),
                          ("samout_export", [export, f"--checkpoint={ck}", f"--output={disk}/w.h5"])]:
        p, left = run_on_tmpfs(prefix, disk, 64, args, timeout=120)
        expect_error(p, "are free on its filesystem", program,
                     what=f"full disk: {program} {args[-1]}")
        assert left == "", "left behind on the full disk"


def need_gpu():
    try:
        import torch
        ok = torch.cuda.is_available() and torch.cuda.device_count() > 0
    except Exception as e:  # a torch without CUDA support
        ok, why = False, str(e)
    if not ok:
        skip("no CUDA device visible to torch; this is a GPU test (ctest -L gpu)")


GPU_TINY = [f for f in TINY if not f.startswith("--device=")] + ["--device=cuda"]


def gpu_losses(binary, tmp, name, extra, n=1):
    m = os.path.join(tmp, name + ".jsonl")
    run([binary] + GPU_TINY + extra + [f"--metrics_file={m}"], n=n)
    return [r["loss"] for r in metrics(m)[0]]


def close(a, b, rtol, what):
    assert len(a) == len(b) and len(a) > 0, (what, len(a), len(b))
    worst = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))
    print(f"{what}: {len(a)} steps, largest relative difference {worst:.2e}")
    assert worst <= rtol, (what, a, b)


def case_gpu_cpu_parity(a, tmp):
    need_gpu()
    args = ["--batch_size=8", "--steps=5"]
    cpu = train(a.bin, tmp, "cpu", args)[0]
    gpu = gpu_losses(a.bin, tmp, "gpu", args)
    close(gpu, [r["loss"] for r in cpu], 1e-4, "GPU vs CPU, fp32")


def case_gpu_bf16_falls(a, tmp):
    """On a corpus made here (the GPU machine may lack the sample corpus's Debian packages)."""
    need_gpu()
    words = ["red", "green", "blue", "cat", "dog", "runs", "sleeps", "under", "the", "old", "tree"]
    with open(os.path.join(tmp, "text.txt"), "w") as f:
        for i in range(3000):
            f.write(" ".join(words[(i * k) % len(words)] for k in range(1, 9)) + f" {i % 17}.\n%\n")
    prep = os.path.join(os.path.dirname(a.bin), "samout_prep")
    run([prep, f"--input={tmp}/text.txt", f"--output={tmp}/corpus", "--vocab_size=400",
         "--val_fraction=0"])
    m = os.path.join(tmp, "bf16.jsonl")
    run([a.bin, "--device=cuda", "--precision=bf16", f"--data={tmp}/corpus/train-*.h5",
         "--hidden=64", "--layers=2", "--heads=4", "--seq_len=32", "--batch_size=16", "--steps=60",
         "--lr=3e-3", "--log_every=5", f"--metrics_file={m}"])
    rows = metrics(m)[0]
    losses = [r["loss"] for r in rows]
    print(f"bf16: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert all(l == l and abs(l) != float("inf") for l in losses), losses
    assert losses[-1] < losses[0] - 1.0, losses
    assert "peak_mem_mb" in rows[-1] and rows[-1]["peak_mem_mb"] > 0, rows[-1]


def case_gpu_sync_free(a, tmp):
    need_gpu()
    common = ["--debug_sync_check", "--batch_size=8", "--steps=12", "--log_every=4",
              "--grad_clip=0.5", "--debug_nan_steps=6"]
    for extra in ([], ["--micro_batch=4"], ["--precision=bf16"]):
        m = os.path.join(tmp, "sync.jsonl")
        run([a.bin] + GPU_TINY + common + extra + [f"--metrics_file={m}"])
        final = metrics(m)[2]
        assert final["skipped_steps"] == 1, final
        print(f"no host sync inside 11 steps {' '.join(extra) or '(fp32)'}")


def case_gpu_mpi_two_ranks(a, tmp):
    need_gpu()
    for zero in ("0", "1"):
        args = ["--batch_size=8", "--steps=10", f"--zero={zero}"]
        one = gpu_losses(a.bin, tmp, "one", args)
        two = gpu_losses(a.bin, tmp, "two", args + ["--comm=mpi"], n=2)
        close(two, one, 1e-5, f"2 ranks --comm=mpi on one GPU vs 1 rank, --zero={zero}")
        cp = gpu_losses(a.bin, tmp, "cp", args + ["--comm=mpi", "--context_parallel=2"], n=2)
        close(cp, one, 1e-5, f"2 ranks --comm=mpi --context_parallel=2 on one GPU vs 1 rank, --zero={zero}")


def main():
    ap = case_parser(globals())
    ap.add_argument("--bin", required=True)
    ap.add_argument("--sample", default="data/sample")
    run_case(globals(), ap.parse_args())


if __name__ == "__main__":
    main()
