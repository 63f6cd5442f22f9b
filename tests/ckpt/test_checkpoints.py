"""Checkpoints end to end: real mpirun, real signals, real kills, real corrupted files.

    python tests/ckpt/test_checkpoints.py CASE --bin build/bin/samout_ddp --export build/bin/samout_export

Cases (each a ctest of its own, see tests/ckpt/CMakeLists.txt):
  exact_resume   interrupted at step 10 and resumed = uninterrupted, bitwise (ZeRO-0 and ZeRO-1)
  world_change   saved by 2 ranks (ZeRO-1), resumed by 1 and by 3: the same loss curve (1e-5)
  preemption     SIGTERM to the ranks and SIGUSR1 to mpirun: exit 75 with a checkpoint, then the
                 run resumes and ends bitwise where an uninterrupted run ends; a second SIGTERM
                 exits at once
  kill_in_save   a rank SIGKILLed in the middle of a save: the previous checkpoint is resumed
  corruption     a flipped bit or a truncated file is detected and the previous checkpoint used
  retention      only the newest --keep_ckpts checkpoints stay, each complete
  nan            an injected NaN skips the step (weights as if it never happened); too many in
                 a row stop the run
  export         samout_export -> torch.load -> the seed's PyTorch SamOut -> torch.save ->
                 --init_from: the same weights
  retention_corrupt  retention keeps the newest valid checkpoints; a corrupt one is left alone
                 and does not count
  lock           a second job on a folder in use exits 2 naming the holder; the first goes on
  resume_refusals    exit 2 naming the file for: every checkpoint corrupt, a --resume path that
                 does not exist (nothing created), another optimizer, and checksummed but
                 inconsistent checkpoints (negative step, bad RNG string, wrong weight shape,
                 short optimizer shard)
  readonly_ckpt_dir  a checkpoint folder on a read-only filesystem is refused at start-up
                 (skipped, exit 77, where a tmpfs cannot be mounted)
  signal_without_ckpt_dir  SIGTERM with no --ckpt_dir exits 128+15, not 75 (no requeue loop)
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
import harness  # noqa: E402
from harness import (case_parser, child_pids, expect_error, losses, metrics, run_case,  # noqa: E402
                     skip, weights)

# --device=cpu: the bitwise checks hold on the CPU; GPU cases live in tests labelled gpu.
TINY = (["--device=cpu", "--data=random:5"] + harness.TINY_MODEL
        + ["--batch_size=12", "--log_every=1", "--threads=1"])


def run(a, n, args, expect=0):
    return harness.run([a.bin] + TINY + args, n=n, expect=expect)


def start(a, n, args):
    return harness.spawn([a.bin] + TINY + args, n=n)


def assert_bitwise(w1, w2, what):
    assert w1.keys() == w2.keys()
    bad = [k for k in w1 if not np.array_equal(w1[k], w2[k])]
    assert not bad, f"{what}: weights differ in {bad[:3]}"
    print(f"{what}: all {len(w1)} tensors bitwise equal")


def case_exact_resume(a, tmp):
    for zero in ("0", "1"):
        z = [f"--zero={zero}"]
        run(a, 2, z + ["--steps=20", f"--save_weights={tmp}/full{zero}.h5"])
        ck = f"{tmp}/ck{zero}"
        run(a, 2, z + ["--steps=10", f"--ckpt_dir={ck}"])
        p = run(a, 2, z + ["--steps=20", f"--ckpt_dir={ck}", f"--save_weights={tmp}/res{zero}.h5"])
        assert "resumed from" in p.stderr and "step_00000010" in p.stderr, p.stderr[-2000:]
        assert_bitwise(weights(f"{tmp}/full{zero}.h5"), weights(f"{tmp}/res{zero}.h5"),
                       f"ZeRO-{zero}: interrupted at 10 and resumed vs uninterrupted")


def case_world_change(a, tmp):
    run(a, 2, ["--zero=1", "--steps=20", f"--metrics_file={tmp}/full.jsonl"])
    run(a, 2, ["--zero=1", "--steps=10", f"--ckpt_dir={tmp}/ck"])
    full = losses(f"{tmp}/full.jsonl")
    for n in (1, 3):
        ck = f"{tmp}/ck{n}"
        shutil.copytree(f"{tmp}/ck", ck)
        run(a, n, ["--zero=1", "--steps=20", f"--ckpt_dir={ck}", f"--metrics_file={tmp}/w{n}.jsonl"])
        got = losses(f"{tmp}/w{n}.jsonl")
        assert sorted(got) == list(range(11, 21)), sorted(got)
        worst = max(abs(got[s] - full[s]) / full[s] for s in got)
        print(f"saved by 2 ranks, resumed by {n}: max relative loss difference {worst:.3g}")
        assert worst <= 1e-5, worst


def wait_for_steps(metrics, k, proc, limit=60):
    t0 = time.time()
    while time.time() - t0 < limit:
        if os.path.exists(metrics) and len(losses(metrics)) >= k:
            return
        assert proc.poll() is None, "the run ended early"
        time.sleep(0.05)
    sys.exit("FAIL: the run made no progress")


def preempt_and_resume(a, tmp, name, send):
    ck, m = f"{tmp}/{name}", f"{tmp}/{name}.jsonl"
    p = start(a, 2, ["--steps=100000", f"--ckpt_dir={ck}", f"--metrics_file={m}"])
    wait_for_steps(m, 5, p)
    send(p)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 75, (p.returncode, err[-3000:])
    saved = sorted(d for d in os.listdir(ck) if d.startswith("step_"))
    assert len(saved) == 1, saved
    k = int(saved[0][5:])
    print(f"{name}: exit 75 with checkpoint {saved[0]}")
    run(a, 2, [f"--steps={k + 5}", f"--ckpt_dir={ck}", f"--save_weights={tmp}/{name}-res.h5"])
    run(a, 2, [f"--steps={k + 5}", f"--save_weights={tmp}/{name}-full.h5"])
    assert_bitwise(weights(f"{tmp}/{name}-full.h5"), weights(f"{tmp}/{name}-res.h5"),
                   f"{name}: preempted at {k}, resumed to {k + 5} vs uninterrupted")


def case_preemption(a, tmp):
    # SLURM's way: the signal reaches every rank.
    preempt_and_resume(a, tmp, "sigterm",
                       lambda p: [os.kill(r, signal.SIGTERM) for r in child_pids(p.pid)])
    # mpirun forwards SIGUSR1 to the ranks (SLURM's --signal=B:USR1@N on a batch script).
    preempt_and_resume(a, tmp, "sigusr1", lambda p: p.send_signal(signal.SIGUSR1))
    # A second SIGTERM exits at once: a model big enough that a step takes a while.
    big = [a.bin, "--device=cpu", "--data=random:1", "--vocab_size=8000", "--hidden=256", "--layers=4", "--heads=4",
           "--seq_len=256", "--batch_size=16", "--steps=100000", "--log_every=1", "--threads=1",
           f"--ckpt_dir={tmp}/twice", f"--metrics_file={tmp}/twice.jsonl"]
    p = harness.spawn(big)
    wait_for_steps(f"{tmp}/twice.jsonl", 1, p)
    p.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # two signals sent back to back would merge into one pending signal
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    print(f"two SIGTERMs: exit {p.returncode} after {time.time() - t0:.2f}s")
    assert p.returncode == 128 + signal.SIGTERM, p.returncode
    assert not [d for d in os.listdir(f"{tmp}/twice") if d.startswith("step_")]


def case_kill_in_save(a, tmp):
    ck = f"{tmp}/ck"
    p = run(a, 2, ["--steps=20", "--ckpt_every=5", f"--ckpt_dir={ck}", "--debug_kill_in_save=10",
                   "--ckpt_async=false"], expect=None)
    assert p.returncode != 0
    left = sorted(os.listdir(ck))
    print(f"rank killed while saving step 10: exit {p.returncode}, {ck} holds {left}")
    assert "step_00000005" in left and "step_00000010" not in left, left
    p = run(a, 2, ["--steps=12", f"--ckpt_dir={ck}"])
    assert "resumed from " + ck + "/step_00000005" in p.stderr, p.stderr[-2000:]
    assert not [d for d in os.listdir(ck) if d.startswith(".tmp-")], os.listdir(ck)


def case_corruption(a, tmp):
    run(a, 2, ["--steps=20", "--ckpt_every=10", f"--ckpt_dir={tmp}/ck"])
    flip, trunc = f"{tmp}/flip", f"{tmp}/trunc"
    shutil.copytree(f"{tmp}/ck", flip)
    shutil.copytree(f"{tmp}/ck", trunc)
    path = f"{flip}/step_00000020/model.h5"
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10  # one bit
    open(path, "wb").write(bytes(data))
    path = f"{trunc}/step_00000020/optim-00000.bin"
    os.truncate(path, os.path.getsize(path) - 100)
    for ck, why in ((flip, "model.h5 fails its checksum"), (trunc, "optim-00000.bin has")):
        p = run(a, 2, ["--steps=25", f"--ckpt_dir={ck}"])
        assert why in p.stderr, p.stderr[-2000:]
        assert f"resumed from {ck}/step_00000010" in p.stderr, p.stderr[-2000:]
        print(f"{os.path.basename(ck)}: detected ({why}), resumed from step 10")
    p = run(a, 1, ["--steps=25", f"--resume={flip}/step_00000020"], expect=2)
    assert "fails its checksum" in p.stderr


def case_retention(a, tmp):
    run(a, 2, ["--steps=20", "--ckpt_every=4", "--keep_ckpts=2", f"--ckpt_dir={tmp}/ck"])
    left = sorted(d for d in os.listdir(f"{tmp}/ck") if d.startswith("step_"))
    print(f"--keep_ckpts=2 after saves at 4, 8, 12, 16, 20: {left}")
    assert left == ["step_00000016", "step_00000020"], left
    for d in left:
        names = set(os.listdir(f"{tmp}/ck/{d}"))
        assert {"manifest.json", "model.h5", "state.json", "optim-00000.bin"} <= names, names


def case_nan(a, tmp):
    run(a, 2, ["--steps=5", f"--save_weights={tmp}/five.h5"])
    run(a, 2, ["--steps=6", "--debug_nan_steps=5", f"--save_weights={tmp}/six.h5",
               f"--metrics_file={tmp}/nan.jsonl"])
    final = metrics(f"{tmp}/nan.jsonl")[2]
    assert final["skipped_steps"] == 1, final
    assert_bitwise(weights(f"{tmp}/five.h5"), weights(f"{tmp}/six.h5"), "a NaN step leaves the weights")
    p = run(a, 2, ["--steps=20", "--debug_nan_steps=3,4,5", "--max_bad_steps=3"], expect=None)
    assert p.returncode == 1 and "3 non-finite steps in a row" in p.stderr, (p.returncode, p.stderr[-2000:])


def case_export(a, tmp):
    import torch
    SamOut = harness.reference_samout()
    run(a, 2, ["--steps=10", f"--ckpt_dir={tmp}/ck", f"--save_weights={tmp}/trained.h5"])
    harness.run([a.export, f"--checkpoint={tmp}/ck", f"--output={tmp}/model.pt"])
    sd = torch.load(f"{tmp}/model.pt")
    model = SamOut(300, 48, 4, 2)
    model.load_state_dict(sd, strict=True)  # every docs/model.md name, every shape
    trained = weights(f"{tmp}/trained.h5")
    for k, v in model.state_dict().items():
        assert np.array_equal(v.numpy(), trained[k]), k
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, f"{tmp}/back.pt")
    run(a, 1, ["--steps=0", f"--init_from={tmp}/back.pt", f"--save_weights={tmp}/back.h5"])
    assert_bitwise(trained, weights(f"{tmp}/back.h5"), "export -> PyTorch -> --init_from")
    p = harness.run([a.export, f"--checkpoint={tmp}/nothing", f"--output={tmp}/x.pt"], expect=None)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr

# ---- Hardening: retention, the folder lock, resume refusals -------------------------------------

M64 = (1 << 64) - 1
P1, P2, P3, P4, P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                      0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def _round(acc, lane):
    return (_rotl((acc + lane * P2) & M64, 31) * P1) & M64


def xxh64(data, seed=0):
    """XXH64 (the checksum of our manifests), from the algorithm's specification."""
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & M64, (seed + P2) & M64, seed, (seed - P1) & M64]
        while i + 32 <= n:
            for k in range(4):
                v[k] = _round(v[k], int.from_bytes(data[i + 8 * k:i + 8 * k + 8], "little"))
            i += 32
        acc = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & M64
        for k in range(4):
            acc = ((acc ^ _round(0, v[k])) * P1 + P4) & M64
    else:
        acc = (seed + P5) & M64
    acc = (acc + n) & M64
    while i + 8 <= n:
        acc ^= _round(0, int.from_bytes(data[i:i + 8], "little"))
        acc = (_rotl(acc, 27) * P1 + P4) & M64
        i += 8
    if i + 4 <= n:
        acc ^= (int.from_bytes(data[i:i + 4], "little") * P1) & M64
        acc = (_rotl(acc, 23) * P2 + P3) & M64
        i += 4
    while i < n:
        acc ^= (data[i] * P5) & M64
        acc = (_rotl(acc, 11) * P1) & M64
        i += 1
    acc = ((acc ^ (acc >> 33)) * P2) & M64
    acc = ((acc ^ (acc >> 29)) * P3) & M64
    return f"{acc ^ (acc >> 32):016x}"


def rechecksum(step_dir):
    """Makes the manifest agree with the files again: a checkpoint that is checksummed but wrong."""
    mpath = f"{step_dir}/manifest.json"
    manifest = json.load(open(mpath))
    for name in manifest["files"]:
        data = open(f"{step_dir}/{name}", "rb").read()
        manifest["files"][name] = {"size": len(data), "xxh64": xxh64(data)}
    json.dump(manifest, open(mpath, "w"))


def case_retention_corrupt(a, tmp):
    ck = f"{tmp}/ck"
    run(a, 2, ["--steps=15", "--ckpt_every=5", "--keep_ckpts=3", f"--ckpt_dir={ck}"])
    path = f"{ck}/step_00000015/model.h5"
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    shutil.rmtree(f"{ck}/step_00000010")
    # Resumes from step 5 (15 is corrupt) and saves step 10: with --keep_ckpts=2 the two valid ones
    # stay, and the corrupt one is left for the user, not counted.
    p = run(a, 2, ["--steps=10", "--ckpt_every=5", "--keep_ckpts=2", f"--ckpt_dir={ck}"])
    left = sorted(d for d in os.listdir(ck) if d.startswith("step_"))
    print(f"after the save at 10 with --keep_ckpts=2: {left}")
    assert left == ["step_00000005", "step_00000010", "step_00000015"], left
    assert "leaving " + ck + "/step_00000015 alone" in p.stderr, p.stderr[-3000:]


def case_lock(a, tmp):
    ck, m = f"{tmp}/ck", f"{tmp}/first.jsonl"
    first = start(a, 1, ["--steps=100000", f"--ckpt_dir={ck}", f"--metrics_file={m}"])
    try:
        wait_for_steps(m, 3, first)
        p = run(a, 1, ["--steps=5", f"--ckpt_dir={ck}", f"--metrics_file={tmp}/second.jsonl"], expect=2)
        line = expect_error(p)
        print(f"second job on the same folder: {line}")
        assert "is in use by another job" in line and f"pid {first.pid}" in line, line
        assert not os.path.exists(f"{tmp}/second.jsonl")
        assert first.poll() is None, "the first job must go on"
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 75, first.returncode
    run(a, 1, ["--steps=1", f"--ckpt_dir={ck}"])  # the lock went with the process


def case_resume_refusals(a, tmp):
    ck = f"{tmp}/ck"
    run(a, 1, ["--steps=4", "--ckpt_every=2", f"--ckpt_dir={ck}"])
    good = f"{ck}/step_00000004"

    # Every checkpoint corrupt: refuse, naming them and --resume=never.
    bad = f"{tmp}/allbad"
    shutil.copytree(ck, bad)
    for d in ("step_00000002", "step_00000004"):
        with open(f"{bad}/{d}/state.json", "a") as f:
            f.write(" ")
    p = run(a, 1, ["--steps=6", f"--ckpt_dir={bad}"], expect=2)
    line = expect_error(p)
    assert "step_00000002" in line and "step_00000004" in line and "--resume=never" in line, line

    # A path that does not exist: said so, and nothing created.
    p = run(a, 1, ["--steps=6", f"--resume={tmp}/nope/step_00000009", f"--ckpt_dir={tmp}/fresh",
                   f"--metrics_file={tmp}/fresh.jsonl"], expect=2)
    assert "no such checkpoint folder" in expect_error(p)
    assert not os.path.exists(f"{tmp}/fresh") and not os.path.exists(f"{tmp}/fresh.jsonl")

    # Another optimizer than the checkpoint's.
    p = run(a, 1, ["--steps=6", "--optimizer=adamw", f"--resume={good}"], expect=2)
    assert "optimizer" in expect_error(p)

    # Checksummed but inconsistent: each names the file, exit 2, no MPI abort banner.
    def broken(name, edit, expect):
        d = f"{tmp}/{name}"
        shutil.copytree(good, d)
        edit(d)
        rechecksum(d)
        p = run(a, 2, ["--steps=6", f"--resume={d}"], expect=2)
        line = expect_error(p)
        print(f"{name}: {line}")
        assert expect in line, (name, line)
        assert "MPI_ABORT" not in p.stderr, p.stderr[-2000:]

    def state_edit(key_path, value):
        def edit(d):
            st = json.load(open(f"{d}/state.json"))
            obj = st
            for k in key_path[:-1]:
                obj = obj[k]
            obj[key_path[-1]] = value
            json.dump(st, open(f"{d}/state.json", "w"))
        return edit

    broken("negative_step", state_edit(["step"], -3), "state.json: step -3 is negative")
    broken("bad_rng", state_edit(["rng_cpu"], "zz" * 8), "state.json: rng_cpu is not a hex string")

    def wrong_shape(d):
        with h5py.File(f"{d}/model.h5", "r+") as f:
            name = next(k for k in sorted(f.keys()) if f[k].ndim >= 1)
            v = f[name][()]
            del f[name]
            f[name] = np.concatenate([v, v], axis=0)
    broken("wrong_shape", wrong_shape, "model.h5")

    def short_shard(d):
        path = f"{d}/optim-00000.bin"
        os.truncate(path, os.path.getsize(path) - 64)
    broken("short_shard", short_shard, "optim-00000.bin")


def case_readonly_ckpt_dir(a, tmp):
    ro = f"{tmp}/ro"
    os.makedirs(ro)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "none", ro]).returncode != 0:
        skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        p = run(a, 1, ["--steps=3", f"--ckpt_dir={ro}"], expect=2)
        line = expect_error(p)
        print(f"read-only checkpoint folder: {line}")
        assert "not writable" in line and "Read-only file system" in line, line
    finally:
        subprocess.run(["umount", ro])


def case_signal_without_ckpt_dir(a, tmp):
    m = f"{tmp}/m.jsonl"
    p = start(a, 1, ["--steps=100000", f"--metrics_file={m}"])
    wait_for_steps(m, 3, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    print(f"SIGTERM without --ckpt_dir: exit {p.returncode}")
    assert p.returncode == 128 + signal.SIGTERM, (p.returncode, err[-2000:])  # not 75: no requeue
    assert "nothing saved" in err, err[-2000:]


def main():
    ap = case_parser(globals())
    ap.add_argument("--bin", required=True)
    ap.add_argument("--export", required=True)
    run_case(globals(), ap.parse_args())


if __name__ == "__main__":
    main()
