"""launch/gpu_check.sh and its report helper, on a machine without a GPU.

    python tests/launch/test_gpu_check.py no_gpu             the one-line refusal, exit 2
    python tests/launch/test_gpu_check.py report --ddp B --generate B --opbench B  the parsers on real program outputs
    python tests/launch/test_gpu_check.py flow               the whole script on stand-in programs
    python tests/launch/test_gpu_check.py dry_run            --dry_run's plan, nothing written
    python tests/launch/test_gpu_check.py build_fails        a failed configure or build stops the run
    python tests/launch/test_gpu_check.py rerun              a second run skips what passed

no_gpu: without nvidia-smi, and with an nvidia-smi that lists a GPU torch cannot use, the script
prints exactly one line and exits 2, writing nothing. Where a real GPU is present the case is
skipped (exit 77): the refusal cannot be observed there.
report: real outputs of samout_ddp (CPU metrics file), bench_generate, bench_cummax_gate (CPU JSON),
pytorch_seed_loop.py and ctest are read back into figures equal to those recomputed here from the
raw files; a skipped GPU test or a sanitizer error turns a pass into a fail; ratios divide samout by
the strongest PyTorch peer that passed at the same shape.
flow: gpu_check.sh with GPU_CHECK_ASSUME_GPU=1 and stand-ins (build folder with a CTestTestfile,
samout_ddp, bench_generate, bench_cummax_gate, compute-sanitizer, nvidia-smi, a python that answers
for pytorch_seed_loop.py): every stage is recorded in order, a failed stage and a hung one (killed at
its --cap, status timeout) do not stop the later ones, results.md/json hold every figure, the
table is printed last, the exit status is 1; a gpu test whose program was not built is left out;
with --budget=5 every stage is skipped for time.
dry_run: `gpu_check.sh --dry_run` exits 0 without a GPU, writes nothing, and prints the stages in the
required order (samout's measurements, then the three PyTorch peers, then the correctness stages),
their caps summing to the printed total within the 360 s budget, and the targets built (each a
target of this project); --only/--skip change the plan.
build_fails: with a stand-in cmake whose build (then whose configure) fails, the run stops with
exactly one line after the build's start, exit 1, results.md written, no later stage or peer run.
rerun: a first run (stand-in cmake) where one stage fails, then a second with the same build
folder: configure is not run again, the build runs as a no-op, the stages that passed are not run
but are carried into the new table with their logs, the failed one runs and passes (exit 0); a
stage that timed out gets twice its cap, and other sources make every stage run again.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import textwrap

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from harness import ROOT, case_parser, check, read_jsonl, run_case, skip, write  # noqa: E402

SCRIPT = os.path.join(ROOT, "launch", "gpu_check.sh")
REPORT = os.path.join(ROOT, "launch", "gpu_check_report.py")


def has_real_gpu():
    if not shutil.which("nvidia-smi"):
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(re.search(r"^GPU \d+:", out, re.M))


def write_exe(path, text):
    write(path, textwrap.dedent(text).lstrip(), executable=True)


# ---- no_gpu ---------------------------------------------------------------------------------------

def case_no_gpu(a, tmp):
    if has_real_gpu():
        skip("this machine has an NVIDIA GPU (nvidia-smi -L lists one), so gpu_check.sh would run "
             "instead of refusing; the refusal is tested on machines without one")
    out = os.path.join(tmp, "out")
    # 1. No nvidia-smi on PATH at all (a PATH that still has bash, python3 and coreutils).
    bare = os.path.join(tmp, "bare")
    os.makedirs(bare)
    for tool in ("bash", "python3", "timeout", "grep", "dirname", "nproc", "sed", "date", "cat"):
        p = shutil.which(tool)
        if p:
            os.symlink(p, os.path.join(bare, tool))
    env = dict(os.environ, PATH=bare)
    env.pop("OUT", None)
    p = subprocess.run(["bash", SCRIPT, f"--out={out}"], capture_output=True, text=True, env=env,
                       timeout=120)
    lines = (p.stdout + p.stderr).splitlines()
    print(f"without nvidia-smi: exit {p.returncode}: {lines}")
    check(p.returncode == 2, f"exit {p.returncode}, expected 2")
    check(len(lines) == 1, f"expected one line, got {lines}")
    check(lines[0].startswith("gpu_check: no NVIDIA GPU on this machine (nvidia-smi not found)")
          and "--prepare" in lines[0], lines[0])
    check(not os.path.exists(out), "it wrote its output folder")
    # 2. nvidia-smi lists a GPU, but torch cannot use one (here: there is none).
    fake = os.path.join(tmp, "fake")
    os.makedirs(fake)
    write_exe(os.path.join(fake, "nvidia-smi"), """
        #!/bin/sh
        echo "GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)"
    """)
    env = dict(os.environ, PATH=fake + os.pathsep + os.environ["PATH"])
    env.pop("OUT", None)
    p = subprocess.run(["bash", SCRIPT, f"--out={out}", f"--python={a.python}"], capture_output=True,
                       text=True, env=env, timeout=300)
    lines = (p.stdout + p.stderr).splitlines()
    print(f"nvidia-smi lists one, torch sees none: exit {p.returncode}: {lines}")
    check(p.returncode == 2, f"exit {p.returncode}, expected 2")
    check(len(lines) == 1 and "torch.cuda.is_available() is False" in lines[0], lines)
    check(not os.path.exists(out), "it wrote its output folder")
    # 3. A bad argument: one line, exit 2, before any probing.
    p = subprocess.run(["bash", SCRIPT, "--frobnicate"], capture_output=True, text=True, timeout=60)
    check(p.returncode == 2 and len((p.stdout + p.stderr).splitlines()) == 1, (p.returncode, p.stderr))
    print("no_gpu: ok")


# ---- report ---------------------------------------------------------------------------------------

def report(out, *args):
    p = subprocess.run([sys.executable, REPORT, "--out", out, *args], capture_output=True, text=True,
                       timeout=60)
    check(p.returncode == 0, f"gpu_check_report {args}: {p.stderr}")
    return p.stdout


def load(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def stage(res, sid):
    found = [s for s in res["stages"] if s["id"] == sid]
    check(len(found) == 1, f"stage {sid}: {len(found)} records")
    return found[0]


def close(x, y, what, rel=1e-9):
    check(isinstance(x, (int, float)) and abs(x - y) <= rel * max(abs(y), 1e-12), f"{what}: {x} != {y}")


def real_ctest_log(tmp):
    """ctest's own output for a passing, a skipped and a failing test."""
    d = os.path.join(tmp, "ctest")
    os.makedirs(d)
    write(os.path.join(d, "CTestTestfile.cmake"),
          'add_test(ops.good "true")\nset_tests_properties(ops.good PROPERTIES LABELS gpu)\n'
          'add_test(ops.skips "sh" "-c" "echo no CUDA device; exit 77")\n'
          'set_tests_properties(ops.skips PROPERTIES LABELS gpu SKIP_RETURN_CODE 77)\n'
          'add_test(train.bad "false")\nset_tests_properties(train.bad PROPERTIES LABELS gpu)\n')
    p = subprocess.run(["ctest", "--test-dir", d, "-L", "gpu", "--output-on-failure"],
                       capture_output=True, text=True, timeout=120)
    full = p.stdout + p.stderr
    only_good = subprocess.run(["ctest", "--test-dir", d, "-R", "ops.good"], capture_output=True,
                               text=True, timeout=120)
    return full, only_good.stdout + only_good.stderr


def case_report(a, tmp):
    out = os.path.join(tmp, "out")
    logs = os.path.join(out, "logs")
    os.makedirs(logs)
    report(out, "init", "--plan", "gpu_ctest=1 ctest", "--plan", "train_a=5 train",
           "--plan", "never=9 a stage that never ran", "card=Test Card", "commit=abc")
    check(os.path.exists(os.path.join(out, "results.md")), "no results.md after init")

    # ctest: one skipped on a GPU machine makes the stage fail; all passing is a pass.
    full, good = real_ctest_log(tmp)
    for name, text in (("ctest_full", full), ("ctest_good", good)):
        write(os.path.join(logs, name + ".log"), text)
    report(out, "stage", "gpu_ctest", "--title", "1 ctest", "--status", "fail", "--log",
           os.path.join(logs, "ctest_full.log"), "--parse", "ctest")
    s = stage(load(out), "gpu_ctest")
    f = s["figures"]
    check((f["tests"], f["passed"], f["failed"], f["skipped"]) == (3, 1, 1, 1), f)
    check(f["failed_tests"] == ["train.bad"] and f["skipped_tests"] == ["ops.skips"], f)
    report(out, "stage", "ctest_good", "--status", "pass", "--log",
           os.path.join(logs, "ctest_good.log"), "--parse", "ctest")
    check(stage(load(out), "ctest_good")["status"] == "pass", "all-passing ctest is not a pass")
    write(os.path.join(logs, "ctest_skip.log"), full.replace("***Failed", "   Passed"))
    report(out, "stage", "ctest_skip", "--status", "pass", "--log",
           os.path.join(logs, "ctest_skip.log"), "--parse", "ctest")
    s = stage(load(out), "ctest_skip")
    check(s["status"] == "fail" and "skipped on a GPU machine" in s["note"], s)
    # With ctest's JUnit file: a test that skips saying it needs two GPUs is not a failure on one;
    # one that skips for want of CUDA still is.
    d = os.path.join(tmp, "ctest_two")
    os.makedirs(d)
    write(os.path.join(d, "CTestTestfile.cmake"),
          'add_test(ops.good "true")\n'
          'add_test(ops.two "sh" "-c" "echo needs two GPUs; exit 77")\n'
          'set_tests_properties(ops.two PROPERTIES SKIP_RETURN_CODE 77)\n')
    junit = os.path.join(logs, "ctest_two.xml")
    p = subprocess.run(["ctest", "--test-dir", d, "--output-on-failure", "--output-junit", junit],
                       capture_output=True, text=True, timeout=120)
    write(os.path.join(logs, "ctest_two.log"), p.stdout + p.stderr)
    for sid, extra, want in (("ctest_two", ["--junit", junit], "pass"), ("ctest_two_nojunit", [], "fail")):
        report(out, "stage", sid, "--status", "pass", "--log", os.path.join(logs, "ctest_two.log"),
               "--parse", "ctest", *extra)
        s = stage(load(out), sid)
        check(s["status"] == want, s)
    check(stage(load(out), "ctest_two")["figures"]["skipped_multi_gpu"] == ["ops.two"], s)
    junit = os.path.join(logs, "ctest_full.xml")
    subprocess.run(["ctest", "--test-dir", os.path.join(tmp, "ctest"), "-L", "gpu", "--output-junit",
                    junit], capture_output=True, timeout=120)
    report(out, "stage", "ctest_skip", "--status", "pass", "--log",
           os.path.join(logs, "ctest_skip.log"), "--parse", "ctest", "--junit", junit)
    check(stage(load(out), "ctest_skip")["status"] == "fail", "a test without CUDA passed")

    # memcheck: an error in the summary fails a run whose exit status was 0.
    write(os.path.join(logs, "memcheck.log"),
          "========= COMPUTE-SANITIZER\n[==========] 7 tests ran.\n[  PASSED  ] 7 tests.\n"
          "========= Invalid __global__ read of size 4 bytes\n========= ERROR SUMMARY: 2 errors\n")
    report(out, "stage", "memcheck", "--status", "pass", "--log", os.path.join(logs, "memcheck.log"),
           "--parse", "memcheck")
    s = stage(load(out), "memcheck")
    check(s["status"] == "fail" and s["figures"]["sanitizer_errors"] == 2
          and s["figures"]["gtest_passed"] == 7, s)

    # samout_ddp's metrics file (real, CPU): median tokens/s after the first two windows.
    m = os.path.join(logs, "train.jsonl")
    subprocess.run([a.ddp, "--device=cpu", "--data=random:0",
                    "--vocab_size=300", "--hidden=32", "--layers=1", "--heads=4", "--seq_len=16",
                    "--batch_size=4", "--steps=12", "--log_every=2", f"--metrics_file={m}",
                    "--threads=1"], check=True, capture_output=True, timeout=300)
    rows = read_jsonl(m)
    steps = [r for r in rows if "step" in r and not r.get("final")]
    want_tps = statistics.median(r["tokens_per_s"] for r in steps[2:])
    report(out, "stage", "train_a", "--title", "5 train", "--status", "pass", "--log", m,
           "--parse", "metrics", "--set", "kind=samout_train", "--set", "batch_size=4",
           "--set", "seq_len=16", "--set", "precision=fp32")
    s = stage(load(out), "train_a")
    check(s["status"] == "pass", s)
    close(s["figures"]["tokens_per_s"], want_tps, "metrics median tokens/s")
    check(s["figures"]["windows"] == len(steps) - 2 and s["figures"]["dropped_windows"] == 2, s)
    check(s["comparison"] if "comparison" in s else True, s)

    # PyTorch peers (real, CPU): the stronger one is the one compared against; a timed-out peer
    # is not a peer.
    peers = {}
    for sid, extra in (("peer_plain", []), ("peer_fused", ["--fused_adam"])):
        log = os.path.join(logs, sid + ".log")
        with open(log, "w") as f:
            subprocess.run([sys.executable, os.path.join(ROOT, "bench", "train", "pytorch_seed_loop.py"),
                            "--vocab_size=300", "--hidden=32", "--layers=1", "--heads=4",
                            "--seq_len=16", "--batch_size=4", "--steps=4", "--warmup=1",
                            "--threads=1", "--decode_tokens=5", "--decode_warmup=1"] + extra,
                           stdout=f, stderr=subprocess.STDOUT, check=True, timeout=300)
        with open(log) as f:
            peers[sid] = json.loads(f.read().strip().splitlines()[-1])
        report(out, "stage", sid, "--status", "pass", "--log", log, "--parse", "pytorch",
               "--set", "kind=pytorch_train")
    fast = {"tokens_per_s": 10 * max(p["tokens_per_s"] for p in peers.values()),
            "step_ms": 1.0, "steps": 4, "batch_size": 4, "seq_len": 16, "precision": "fp32",
            "compile": "reduce-overhead", "fused_adam": True}
    write(os.path.join(logs, "peer_hung.log"), "pytorch_seed_loop: ...\n" + json.dumps(fast) + "\n")
    report(out, "stage", "peer_hung", "--status", "timeout", "--log",
           os.path.join(logs, "peer_hung.log"), "--parse", "pytorch", "--set", "kind=pytorch_train")
    res = load(out)
    best = max(peers.values(), key=lambda p: p["tokens_per_s"])
    cmp = stage(res, "train_a")["comparison"]
    close(cmp["ratio"], want_tps / best["tokens_per_s"], "ratio to the strongest peer")
    close(cmp["peer_tokens_per_s"], best["tokens_per_s"], "peer tokens/s")
    close(stage(res, "peer_plain")["figures"]["decode_tokens_per_s"],
          peers["peer_plain"]["decode_tokens_per_s"], "peer decode")

    # bench_generate (real, CPU): tokens/s = 1000 / the median over contexts of ms/token (median).
    log = os.path.join(logs, "decode.log")
    with open(log, "w") as f:
        subprocess.run([a.generate, "--vocab_size=100", "--hidden=32",
                        "--layers=1", "--heads=4", "--contexts=10,20,40", "--tokens=5", "--warmup=2",
                        "--threads=1"], stdout=f, stderr=subprocess.STDOUT, check=True, timeout=300)
    text = open(log).read()
    meds = [float(m.group(1)) for m in re.finditer(r"^\s*(?:10|20|40)\s+[\d.]+\s+([\d.]+)", text, re.M)]
    check(len(meds) == 3, f"bench_generate's table changed? {text}")
    report(out, "stage", "decode", "--status", "pass", "--log", log, "--parse", "generate",
           "--set", "kind=samout_decode")
    s = stage(load(out), "decode")
    check([c["context"] for c in s["figures"]["contexts"]] == [10, 20, 40], s)
    close(s["figures"]["tokens_per_s"], 1000 / statistics.median(meds), "decode tokens/s", 1e-6)
    check("sampling_tokens_per_s" in s["figures"] and "read_gb_s" in s["figures"], s["figures"])
    close(s["comparison"]["ratio"], s["figures"]["tokens_per_s"] / max(
        p["decode_tokens_per_s"] for p in peers.values()), "decode ratio", 1e-6)

    # bench_cummax_gate --json (real, CPU format).
    j = os.path.join(out, "opbench.json")
    subprocess.run([a.opbench, "--shapes=2x16x32", "--reps=2",
                    "--warmup=1", "--threads=1", f"--json={j}"], check=True, capture_output=True,
                   timeout=300)
    doc = json.load(open(j))
    report(out, "stage", "opbench", "--status", "pass", "--log", j, "--parse", "opbench",
           "--input", j, "--set", "kind=samout_op")
    s = stage(load(out), "opbench")
    fb = [r for r in s["figures"]["rows"] if r["what"] == "fwd_bwd"]
    want = [m for m in doc["results"][0]["measurements"] if m["what"] == "fwd_bwd"][0]
    check(len(fb) == 1 and fb[0]["shape"] == "2x16x32", s["figures"]["rows"])
    close(fb[0]["composite_over_fused"], want["composite_over_fused"], "op ratio")
    # ... and the CUDA format (what --device=cuda writes), with a failed check.
    cuda_doc = {"benchmark": "bench_cummax_gate", "device": "cuda", "check_ok": False,
                "results": [{"shape": [32, 1024, 512], "dtype": "bf16",
                             "copy": {"ms": 0.02, "gb_s": 4300.0},
                             "measurements": [{"what": "fwd_bwd", "bytes": 1e8,
                                               "composite_over_fused": 2.5,
                                               "composite": {"ms": 1.0, "gb_s": 100.0},
                                               "fused": {"ms": 0.4, "gb_s": 250.0,
                                                         "fraction_of_copy": 0.058}}]}]}
    write(os.path.join(out, "opbench_cuda.json"), json.dumps(cuda_doc))
    report(out, "stage", "opbench_cuda", "--status", "pass", "--parse", "opbench", "--input",
           os.path.join(out, "opbench_cuda.json"), "--set", "kind=samout_op")
    s = stage(load(out), "opbench_cuda")
    check(s["status"] == "fail" and "disagree" in s["note"], s)
    check(s["figures"]["rows"][0]["fused_gb_s"] == 250.0, s)

    # A stage whose output is missing cannot pass.
    report(out, "stage", "ghost", "--status", "pass", "--parse", "metrics", "--input",
           os.path.join(logs, "nothing.jsonl"))
    check(stage(load(out), "ghost")["status"] == "fail", "a stage without output passed")

    # The Markdown: planned stages in plan order, one never run, the ratio cell, the op table.
    table = report(out, "render", "--print")
    md = open(os.path.join(out, "results.md")).read()
    check(table and table in md, "the printed table is not the one in results.md")
    rows = [l for l in table.splitlines() if l.startswith("| ")][1:]
    check(rows[0].startswith("| 1 ctest | fail") and rows[1].startswith("| 5 train | pass")
          and rows[2].startswith("| 9 a stage that never ran | not run"), rows[:3])
    check(f"{cmp['ratio']:.2f}x the strongest" in rows[1], rows[1])
    check("- card: Test Card" in md and "| 2x16x32 | fp32 | fwd_bwd |" in md, md)
    print(table)
    print("report: ok")


# ---- flow -----------------------------------------------------------------------------------------

FAKE_DDP = r'''
#!PYTHON
import json, os, sys
if os.environ.get("FAKE_CALLS"):
    open(os.environ["FAKE_CALLS"], "a").write("samout_ddp " + " ".join(sys.argv[1:]) + "\n")
a = dict(x[2:].split("=", 1) for x in sys.argv[1:] if x.startswith("--") and "=" in x)
b, t = int(a["batch_size"]), int(a["seq_len"])
base = {1024: 600000.0, 49: 250000.0, 8192: 300000.0}[t]
with open(a["metrics_file"], "w") as f:
    steps, every = int(a["steps"]), int(a["log_every"])
    for i, s in enumerate(range(every, steps + 1, every)):
        tps = base * (0.5 if i < 2 else 1.0 + 0.01 * (i % 3))
        f.write(json.dumps({"step": s, "loss": 9.0 - 0.01 * s, "tokens_per_s": tps,
                            "step_ms": 1000.0 * b * t / tps, "mfu": 0.3, "peak_mem_mb": 1024.0 * b}) + "\n")
    f.write(json.dumps({"final": True, "steps": steps, "mean_tokens_per_s": base, "wall_s": 1.0}) + "\n")
print("fake samout_ddp", " ".join(sys.argv[1:]))
'''

FAKE_GENERATE = r'''
#!/bin/sh
[ -n "${FAKE_CALLS:-}" ] && echo "bench_generate $*" >> "$FAKE_CALLS"
[ -n "${FAKE_HANG_DECODE:-}" ] && exec sleep 600
cat <<EOF
model: V=8460 d=512 L=8 h=8, 21266480 parameters, device cuda, threads 16, CUDA graph
baseline: read the 80.4 MB a step touches once (sum over each weight tensor): 0.050 ms median of 200 (1608.0 GB/s)
   context   prefill_ms  ms/token(med) ms/token(mean)     tokens/s    vs_read
       100          3.1          0.400          0.410       2439.0       8.00
      1000          5.2          0.500          0.510       1960.8      10.00
     10000         20.9          0.450          0.460       2173.9       9.00
flatness: slowest/fastest median over contexts = 1.250
ratio: median ms/token (all contexts) / read-weights-once = 9.00 (target <= 1.5)
with sampling (T=0.8, top-k 50, top-p 0.9, penalty 1.1): 0.600 ms/token median, 1600.0 tokens/s
EOF
'''

FAKE_OPBENCH = r'''
#!PYTHON
import json, sys
a = dict(x[2:].split("=", 1) for x in sys.argv[1:] if x.startswith("--") and "=" in x)
res = [{"shape": list(s), "dtype": d, "copy": {"ms": 0.1, "gb_s": 4300.0},
        "measurements": [{"what": w, "bytes": 1e8, "composite_over_fused": 3.0,
                          "composite": {"ms": 0.3, "gb_s": 300.0},
                          "fused": {"ms": 0.1, "gb_s": 1000.0, "fraction_of_copy": 0.23}}
                         for w in ("fwd_infer", "fwd_train", "fwd_bwd")]}
       for s in ((32, 1024, 512), (4, 16384, 512)) for d in ("fp32", "bf16")]
json.dump({"benchmark": "bench_cummax_gate", "device": "cuda", "check_ok": True, "results": res},
          open(a["json"], "w"))
'''

FAKE_TEST_BIN = r'''
#!/bin/sh
echo "[==========] 5 tests ran."
echo "[  PASSED  ] 5 tests."
'''

FAKE_SANITIZER = r'''
#!/bin/sh
# compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 1 PROGRAM
[ "$1 $2 $3 $4 $5 $6" = "--tool memcheck --report-api-errors no --error-exitcode 1" ] || exit 9
shift 6
echo "========= COMPUTE-SANITIZER"
"$@"
echo "========= ERROR SUMMARY: 0 errors"
'''

FAKE_SMI = r'''
#!/bin/sh
case "$*" in
  -L) echo "GPU 0: NVIDIA H200 (UUID: GPU-fake)" ;;
  *memory.used*) while :; do echo 2048; sleep 0.2; done ;;
  *name,driver_version*) echo "NVIDIA H200, 580.00, 143771 MiB" ;;
  *) echo "fake nvidia-smi" ;;
esac
'''

FAKE_PYTHON = r'''
#!/bin/sh
# The PyTorch peers answer from here; anything else goes to the real interpreter.
case "$1" in
  *pytorch_seed_loop.py) [ -n "${FAKE_CALLS:-}" ] && echo "peer $*" >> "$FAKE_CALLS"
    exec REALPY - "$@" <<'EOF'
import json, sys
a = dict(x[2:].split("=", 1) if "=" in x else (x[2:], True) for x in sys.argv[2:] if x.startswith("--"))
t = int(a["seq_len"])
if a.get("compile", "none") != "none":
    tps = 500000.0          # the compiled peer is the strongest at T=49
else:
    tps = {1024: 400000.0, 49: 100000.0, 8192: 250000.0}[t] * (1.5 if a.get("precision") == "bf16" else 1.0)
r = {"tokens_per_s": tps, "step_ms": 1.0, "steps": int(a["steps"]), "batch_size": int(a["batch_size"]),
     "seq_len": t, "precision": a.get("precision", "fp32"), "compile": a.get("compile", "none"),
     "fused_adam": "fused_adam" in a, "peak_mem_bytes": 2 ** 31, "warmup_s": 1.0}
if "decode_tokens" in a:
    r.update(decode_tokens_per_s=400.0, decode_ms_per_token=2.5)
print("fake peer")
print(json.dumps(r))
EOF
  ;;
  *) exec REALPY "$@" ;;
esac
'''

# MPI_FAILS: while that file exists, the 2-rank test fails. ops.not_built names a program that
# was not built: gpu_check must leave it out rather than count it as a failure. ops.two_gpus skips
# on one GPU, saying why: not a failure either.
CTEST_FILE = '''
add_test(ops.cuda_forward "true")
set_tests_properties(ops.cuda_forward PROPERTIES LABELS gpu)
add_test(generate.cuda_graph "true")
set_tests_properties(generate.cuda_graph PROPERTIES LABELS gpu)
add_test(ops.not_built "BUILD/bin/not_built_cuda_test")
set_tests_properties(ops.not_built PROPERTIES LABELS gpu)
add_test(ops.two_gpus "sh" "-c" "echo needs two GPUs; exit 77")
set_tests_properties(ops.two_gpus PROPERTIES LABELS gpu SKIP_RETURN_CODE 77)
add_test(train.gpu_sync_free "true")
set_tests_properties(train.gpu_sync_free PROPERTIES LABELS gpu)
add_test(train.gpu_mpi_two_ranks "sh" "-c" "if test -e MPI_FAILS; then echo losses differ; exit 1; fi")
set_tests_properties(train.gpu_mpi_two_ranks PROPERTIES LABELS gpu)
add_test(ops.cpu_only "false")
'''

# cmake: --version; a configure (-S ROOT -B BUILD ...) that writes a cache; a build (--build) that
# has nothing to do. FAKE_CONFIGURE_FAIL / FAKE_BUILD_FAIL make them fail as the real ones would.
FAKE_CMAKE = r'''
#!/bin/sh
[ -n "${FAKE_CALLS:-}" ] && echo "cmake $*" >> "$FAKE_CALLS"
case "$1" in
  --version) echo "cmake version 3.99.0"; exit 0 ;;
  --build)
    if [ -n "${FAKE_BUILD_FAIL:-}" ]; then
      echo "[1/9] Building CUDA object src/ops/CMakeFiles/samout_ops.dir/cummax_gate_bf16.cu.o"
      echo "FAILED: src/ops/CMakeFiles/samout_ops.dir/cummax_gate_bf16.cu.o"
      echo "/x/src/ops/cummax_gate_bf16.cu(12): error: identifier \"m\" is undefined"
      echo "ninja: build stopped: subcommand failed."
      exit 1
    fi
    echo "ninja: no work to do."; exit 0 ;;
esac
if [ -n "${FAKE_CONFIGURE_FAIL:-}" ]; then
  echo "CMake Error at CMakeLists.txt:77 (find_package): Could not find a package \"Torch\""
  exit 1
fi
while [ $# -gt 0 ]; do [ "$1" = -B ] && b="$2"; shift; done
mkdir -p "$b" && echo "CMAKE_GENERATOR:INTERNAL=Ninja" > "$b/CMakeCache.txt"
echo "-- samout: CUDA kernels ON, NCCL ON"
'''


def make_fakes(tmp):
    fb = os.path.join(tmp, "fakebin")
    build = os.path.join(tmp, "build")
    os.makedirs(fb)
    os.makedirs(os.path.join(build, "bin"))
    py = sys.executable
    for path, text in ((os.path.join(build, "bin", "samout_ddp"), FAKE_DDP),
                       (os.path.join(build, "bin", "bench_generate"), FAKE_GENERATE),
                       (os.path.join(build, "bin", "bench_cummax_gate"), FAKE_OPBENCH),
                       (os.path.join(build, "bin", "cummax_gate_cuda_test"), FAKE_TEST_BIN),
                       (os.path.join(fb, "compute-sanitizer"), FAKE_SANITIZER),
                       (os.path.join(fb, "nvidia-smi"), FAKE_SMI),
                       (os.path.join(fb, "python-fake"), FAKE_PYTHON),
                       (os.path.join(fb, "cmake"), FAKE_CMAKE)):
        write_exe(path, text.replace("#!PYTHON", "#!" + py).replace("REALPY", py))
    write(os.path.join(build, "CTestTestfile.cmake"),
          CTEST_FILE.replace("BUILD", build).replace("MPI_FAILS", os.path.join(tmp, "mpi_fails")))
    write(os.path.join(tmp, "mpi_fails"), "")
    return fb, build


def run_flow(tmp, fb, build, out, *extra, env_extra=None, skip_build=True):
    """gpu_check.sh on the stand-ins; without skip_build its configure and build call the stand-in
    cmake (first on PATH)."""
    env = dict(os.environ, PATH=fb + os.pathsep + os.environ["PATH"], GPU_CHECK_ASSUME_GPU="1",
               GPU_CHECK_SYSROOT=os.path.join(tmp, "sysroot"), **(env_extra or {}))
    env.pop("OUT", None)
    cmd = ["bash", SCRIPT, f"--out={out}", f"--build={build}",
           f"--python={os.path.join(fb, 'python-fake')}", *extra]
    if skip_build:
        cmd.insert(4, "--skip=configure,build")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    print(p.stdout[-6000:])
    if p.stderr.strip():
        print("stderr:", p.stderr[-3000:])
    return p


def case_flow(a, tmp):
    fb, build = make_fakes(tmp)
    out = os.path.join(tmp, "out")
    p = run_flow(tmp, fb, build, out, "--cap=decode:3", env_extra={"FAKE_HANG_DECODE": "1"})
    check(p.returncode == 1, f"exit {p.returncode}, expected 1 (a stage failed)")
    res = load(out)
    ids = [s["id"] for s in res["stages"]]
    plan = [pid for pid, _ in res["plan"]]
    check("configure" not in plan and "build" not in plan, plan)
    check(ids == plan, f"stages recorded {ids}, planned {plan}")
    status = {s["id"]: s["status"] for s in res["stages"]}
    want = {sid: "pass" for sid in plan}
    want.update(mpi_two_ranks="fail", decode="timeout")
    check(status == want, f"statuses {status}")
    g = stage(res, "gpu_ctest")
    # -L gpu without the two run on their own, and without the one whose program is missing.
    check(g["figures"]["tests"] == 3 and g["figures"]["passed"] == 2, g)
    check("not built, not run: ops.not_built" in g.get("note", ""), g)
    check(g["figures"]["skipped_multi_gpu"] == ["ops.two_gpus"] and g["figures"]["skipped"] == 0, g)
    t = stage(res, "train_32x1024_bf16")  # 30 steps, a window every 5: windows 2-5 after warm-up
    close(t["figures"]["tokens_per_s"], statistics.median(
        [600000.0 * (1.0 + 0.01 * (i % 3)) for i in range(2, 6)]), "median after warm-up")
    close(t["comparison"]["ratio"], t["figures"]["tokens_per_s"] / 600000.0, "ratio vs bf16 eager")
    check(t["comparison"]["vs"] == "bf16 eager + fused Adam", t["comparison"])
    check(t["figures"]["smi_peak_mib"] == 2048.0, t["figures"])
    t = stage(res, "train_32x49_fp32")
    check(t["comparison"]["vs"] == "fp32 compile reduce-overhead + fused Adam", t["comparison"])
    check(stage(res, "opbench")["figures"]["rows"][2]["what"] == "fwd_bwd", "opbench rows")
    check(res["meta"]["card"] == "NVIDIA H200" and "wall_s" in res["meta"], res["meta"])
    tail = p.stdout.rstrip().splitlines()
    check(tail[-1].startswith("gpu_check: not passed: ") and "decode=timeout" in tail[-1], tail[-1])
    check(any(l.startswith("| 1 samout train B=32 T=1024 bf16 | pass") for l in tail[-25:]),
          "the table is not printed last")
    md = open(os.path.join(out, "results.md")).read()
    check("| 2 samout decode batch 1, CUDA graph | timeout |" in md, md)
    for sid in plan:
        check(os.path.exists(os.path.join(out, "logs", sid + ".log")), f"no log for {sid}")
    check(not os.path.exists(os.path.join(out, "logs", "peer_compile_prewarm.log")), "a prewarm ran")

    # A budget too small for anything: every stage is recorded as skipped, none is started
    # (--force: the first run's passes, kept in the build folder, would be carried otherwise).
    out2 = os.path.join(tmp, "out2")
    p = run_flow(tmp, fb, build, out2, "--budget=5", "--force")
    check(p.returncode == 1, f"exit {p.returncode}")
    res = load(out2)
    check(all(s["status"] == "skipped" and "out of time" in s["note"] for s in res["stages"])
          and len(res["stages"]) == len(res["plan"]), res["stages"])
    check(not os.path.exists(os.path.join(out2, "logs", "gpu_ctest.log")), "a skipped stage ran")
    print("flow: ok")


# ---- dry_run --------------------------------------------------------------------------------------

# The order the issue asks for: samout measured first, then the strongest peers, then correctness.
ORDER = ["configure", "build", "train_32x1024_bf16", "train_32x49_fp32", "train_4x8192_bf16",
         "decode", "opbench", "peer_32x1024_bf16", "peer_32x49_compile", "peer_4x8192_bf16",
         "gpu_ctest", "memcheck", "sync_free", "mpi_two_ranks"]
CORRECTNESS = {"gpu_ctest", "memcheck", "sync_free", "mpi_two_ranks"}
SAMOUT = {"train_32x1024_bf16", "train_32x49_fp32", "train_4x8192_bf16", "decode", "opbench"}


def dry_run(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    env.pop("OUT", None)
    p = subprocess.run(["bash", SCRIPT, "--dry_run", *args], capture_output=True, text=True, env=env,
                       timeout=120)
    print(p.stdout + p.stderr)
    check(p.returncode == 0, f"--dry_run exited {p.returncode}")
    check(not p.stderr.strip(), f"--dry_run wrote to stderr: {p.stderr}")
    return parse_plan(p.stdout)


def parse_plan(text):
    """{"run": [(id, cap)], "carried": [ids], "targets": [...], "total": N, "budget": N}."""
    plan = {"run": [], "carried": [], "targets": [], "total": None, "budget": None, "text": text}
    for line in text.splitlines():
        m = re.match(r"^  (\S+)\s+(\d+) s  \S", line)
        if m:
            plan["run"].append((m.group(1), int(m.group(2))))
        m = re.match(r"^  (\S+)\s+carried  \S", line)
        if m:
            plan["carried"].append(m.group(1))
        m = re.match(r"^  targets: (.*)$", line)
        if m:
            plan["targets"] = [] if m.group(1) == "(none)" else m.group(1).split()
        m = re.match(r"^  total (\d+) s \(budget (\d+) s\)", line)
        if m:
            plan["total"], plan["budget"] = int(m.group(1)), int(m.group(2))
    return plan


def cmake_targets():
    """Every add_executable/add_library name in the project's CMakeLists.txt files."""
    names = set()
    for d, _, files in os.walk(ROOT):
        if "CMakeLists.txt" in files and not os.path.relpath(d, ROOT).startswith(("build", ".")):
            text = open(os.path.join(d, "CMakeLists.txt")).read()
            names.update(re.findall(r"add_(?:executable|library)\(\s*([A-Za-z0-9_]+)", text))
            for body in re.findall(r"foreach\(name ([^)]*)\)", text):  # <name>_test loops
                names.update(n + "_test" for n in body.split())
    return names


def case_dry_run(a, tmp):
    out, build = os.path.join(tmp, "out"), os.path.join(tmp, "build")
    env = {"PATH": os.environ["PATH"]}  # no GPU_CHECK_* from outside
    plan = dry_run(f"--out={out}", f"--build={build}", env_extra=env)
    ids = [i for i, _ in plan["run"]]
    check(ids[0] == "setup" and ids[1:] == ORDER, f"stages {ids}")
    last_samout = max(ids.index(i) for i in SAMOUT)
    check(all(ids.index(i) > last_samout for i in CORRECTNESS | {i for i in ids if i.startswith("peer")}),
          "a peer or a correctness stage comes before samout's measurements")
    check(all(ids.index(i) > ids.index("peer_4x8192_bf16") for i in CORRECTNESS), ids)
    check(plan["total"] == sum(c for _, c in plan["run"]), f"total {plan['total']} != the sum of caps")
    check(plan["budget"] == 360 and plan["total"] <= 360, f"total {plan['total']}, budget {plan['budget']}")
    check(not any("fp32 eager" in l for l in plan["text"].splitlines()), "an fp32 eager peer is planned")
    want = {"samout_ddp", "bench_generate", "bench_cummax_gate", "cummax_gate_cuda_test",
            "generate_cuda_test", "samout_ops", "samout_prep"}
    check(set(plan["targets"]) == want, f"targets {plan['targets']}")
    unknown = set(plan["targets"]) - cmake_targets()
    check(not unknown, f"not targets of this project: {unknown}")
    check(f"--target {' '.join(plan['targets'])}" in plan["text"], "no build command")
    check(not os.path.exists(out) and not os.path.exists(build), "--dry_run wrote a folder")
    # The default folders: nothing made either.
    before = {d: os.path.exists(os.path.join(ROOT, d)) for d in ("build-gpu", "runs")}
    dry_run(env_extra=env)
    check({d: os.path.exists(os.path.join(ROOT, d)) for d in before} == before, "--dry_run made a folder")
    # --only=peers needs no build; --skip drops a stage and its cap.
    p = dry_run("--only=peers", f"--build={build}", env_extra=env)
    check([i for i, _ in p["run"]] == ["setup", "peer_32x1024_bf16", "peer_32x49_compile",
                                       "peer_4x8192_bf16"] and p["targets"] == [], p["run"])
    p = dry_run("--skip=memcheck,train", "--cap=gpu_ctest:50", f"--build={build}", env_extra=env)
    caps = dict(p["run"])
    check("memcheck" not in caps and not any(i.startswith("train") for i in caps), caps)
    check(caps["gpu_ctest"] == 50 and p["total"] == sum(caps.values()), p["run"])
    check(not os.path.exists(build), "--dry_run wrote a folder")
    print("dry_run: ok")


# ---- build_fails ----------------------------------------------------------------------------------

def calls(path):
    return open(path).read().splitlines() if os.path.exists(path) else []


def case_build_fails(a, tmp):
    fb, build = make_fakes(tmp)
    for what, var in (("build", "FAKE_BUILD_FAIL"), ("configure", "FAKE_CONFIGURE_FAIL")):
        out, log = os.path.join(tmp, "out_" + what), os.path.join(tmp, what + ".calls")
        p = run_flow(tmp, fb, build, out, "--force", skip_build=False,
                     env_extra={var: "1", "FAKE_CALLS": log})
        check(p.returncode == 1, f"{what}: exit {p.returncode}, expected 1")
        lines = p.stdout.rstrip("\n").splitlines()
        start = [i for i, l in enumerate(lines) if l.startswith(f"gpu_check: -- {what}")]
        check(len(start) == 1, f"{what} did not start once: {lines}")
        after = lines[start[0] + 1:]
        check(len(after) == 1, f"{what}: expected exactly one line after its start, got {after}")
        check(re.match(rf"gpu_check: {what} failed after \d+ s \(see logs/{what}\.log; first error: .*[Ee]rror.*\); stopping$",
                       after[0]) is not None, after[0])
        check(not p.stderr.strip(), p.stderr)
        res = load(out)
        ids = [s["id"] for s in res["stages"]]
        check(ids == (["configure", "build"] if what == "build" else ["configure"]), ids)
        check(stage(res, what)["status"] == "fail", stage(res, what))
        md = open(os.path.join(out, "results.md")).read()
        check(f"| {stage(res, what)['title']} | fail |" in md and "| not run |" in md, md)
        made = calls(log)
        check(not any(c.startswith(("samout_ddp", "peer", "bench_generate")) for c in made),
              f"a later stage ran: {made}")
        check(sum(c.startswith("cmake --build") for c in made) == (what == "build"), made)
        check(not os.path.exists(os.path.join(out, "logs", "gpu_ctest.log")), "ctest ran")
        shutil.rmtree(os.path.join(build, "gpu_check"), ignore_errors=True)
    print("build_fails: ok")


# ---- rerun ----------------------------------------------------------------------------------------

def case_rerun(a, tmp):
    fb, build = make_fakes(tmp)
    log = os.path.join(tmp, "calls")
    # The sources the rerun stamp is made of: a tree of this test's (the checkout may change
    # under a test that runs while others edit it).
    src = os.path.join(tmp, "sources")
    os.makedirs(os.path.join(src, "src"))
    write(os.path.join(src, "src", "op.cu"), "// v1\n")
    env = {"FAKE_CALLS": log, "GPU_CHECK_SOURCES": src}
    path = {"PATH": fb + os.pathsep + os.environ["PATH"], "GPU_CHECK_SOURCES": src}
    out1 = os.path.join(tmp, "out1")
    p = run_flow(tmp, fb, build, out1, skip_build=False, env_extra=env)
    check(p.returncode == 1, f"first run: exit {p.returncode}")
    res1 = load(out1)
    status1 = {s["id"]: s["status"] for s in res1["stages"]}
    check(status1 == {i: ("fail" if i == "mpi_two_ranks" else "pass") for i in ORDER}, status1)
    first = calls(log)
    check(sum(c.startswith("cmake -S") for c in first) == 1
          and sum(c.startswith("cmake --build") for c in first) == 1, first)

    # The plan of the rerun: only the failed stage, and the build it needs (a no-op).
    plan = dry_run(f"--build={build}", env_extra=path)
    check([i for i, _ in plan["run"]] == ["setup", "build", "mpi_two_ranks"], plan["run"])
    check(plan["carried"] == [i for i in ORDER if i not in ("build", "mpi_two_ranks")], plan["carried"])
    check(plan["targets"] == ["samout_ddp"], plan["targets"])

    os.remove(os.path.join(tmp, "mpi_fails"))  # what the fix would do
    out2 = os.path.join(tmp, "out2")
    p = run_flow(tmp, fb, build, out2, skip_build=False, env_extra=env)
    check(p.returncode == 0, f"rerun: exit {p.returncode}")
    second = calls(log)[len(first):]
    check(not any(c.startswith("cmake -S") for c in second), f"configure ran again: {second}")
    builds = [c for c in second if c.startswith("cmake --build")]
    check(len(builds) == 1 and "--target samout_ddp " in builds[0] + " ", builds)
    check(not any(c.startswith(("samout_ddp", "peer", "bench_generate")) for c in second),
          f"a stage that passed ran again: {second}")
    res2 = load(out2)
    by_id = {s["id"]: s for s in res2["stages"]}
    check([pid for pid, _ in res2["plan"]] == ORDER, res2["plan"])
    check(all(by_id[i]["status"] == "pass" for i in ORDER), {i: by_id[i]["status"] for i in ORDER})
    for i in ORDER:
        if i in ("build", "mpi_two_ranks"):
            check("carried_from" not in by_id[i], by_id[i])
        else:
            check(by_id[i]["carried_from"] == res1["meta"]["date"], by_id[i])
            check(by_id[i] == {**stage(res1, i), "carried_from": res1["meta"]["date"]}, i)
            if by_id[i].get("log"):
                check(os.path.exists(os.path.join(out2, by_id[i]["log"])), f"no log for {i}")
    t = by_id["train_32x1024_bf16"]
    check(t["comparison"]["vs"] == "bf16 eager + fused Adam", t)  # ratios from carried peers
    md = open(os.path.join(out2, "results.md")).read()
    check("passed in the earlier run of " + res1["meta"]["date"] in md, md)
    check("gpu_check: every stage passed" in p.stdout, p.stdout[-500:])

    # A stage that timed out gets twice its cap on the rerun.
    state = os.path.join(build, "gpu_check", "results.json")
    doc = json.load(open(state))
    for st in doc["stages"]:
        if st["id"] == "decode":
            st["status"] = "timeout"
    write(state, json.dumps(doc))
    plan = dry_run(f"--build={build}", env_extra=path)
    check(dict(plan["run"]).get("decode") == 24, plan["run"])
    check("decode" not in plan["carried"] and len(plan["carried"]) == len(ORDER) - 2, plan["carried"])
    plan = dry_run(f"--build={build}", "--force", env_extra=path)
    check(not plan["carried"] and "  rerun:" not in plan["text"], plan["text"])
    plan = dry_run(f"--build={build}", "--only=train", env_extra=path)
    check([i for i, _ in plan["run"]] == ["setup", "build", "train_32x1024_bf16", "train_32x49_fp32",
                                          "train_4x8192_bf16"] and plan["carried"] == ["configure"],
          plan["text"])
    # Another architecture, or an edited source: every stage runs again.
    for extra in ({"GPU_CHECK_CUDA_ARCH": "100"}, {}):
        if not extra:
            write(os.path.join(src, "src", "op.cu"), "// v2\n")
        plan = dry_run(f"--build={build}", env_extra={**path, **extra})
        check("ran on other sources" in plan["text"] and not plan["carried"]
              and [i for i, _ in plan["run"]][1:] == ORDER, plan["run"])
    print("rerun: ok")


def main():
    p = case_parser(globals())
    p.add_argument("--ddp", help="samout_ddp (report)")
    p.add_argument("--generate", help="bench_generate (report)")
    p.add_argument("--opbench", help="bench_cummax_gate (report)")
    p.add_argument("--python", default=sys.executable, help="a python with torch (no_gpu)")
    run_case(globals(), p.parse_args(), ignore_cleanup_errors=True)


if __name__ == "__main__":
    main()
