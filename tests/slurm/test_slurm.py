"""launch/slurm/train.sbatch against a real single-node Slurm started here on localhost.

    python tests/slurm/test_slurm.py --bin build/bin/samout_ddp --root . \
        [--script train-multinode.sbatch] [--launcher mpirun]

Starts a private munged, slurmctld and slurmd (config, state, sockets, logs, free ports, all in
a temporary folder: nothing in /etc or /run is touched, and another Slurm on the machine is left
alone), waits for the node to be idle, and submits the users' train.sbatch as a small CPU run
with 2 tasks under srun --mpi=pmix. Once it trains it sends `scancel --signal=USR1 --batch`, as
--signal=B:USR1@120 would, and checks that:
  - the batch shell forwarded the signal and the ranks saved a checkpoint and exited 75,
  - the script requeued the job (its second run prints SLURM_RESTART_COUNT=1, Restarts=1),
  - the second run resumed from that checkpoint ("resumed from CKPT/step_K"),
  - it finished: every step done, final checkpoint written, job COMPLETED with exit code 0:0.
The daemons are stopped by the PIDs saved at their start and the folder removed, also on failure.
Exits 77 (ctest SKIP_RETURN_CODE) only when Slurm cannot run here: not root (slurmd must be).
Set SAMOUT_SLURM_KEEP=1 to keep the folder.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from harness import TINY_MODEL, skip  # noqa: E402

STEPS = 1000          # 5-15 ms a step with 2 CPU ranks under srun: 5-15 s of training
SIGNAL_AT = 30        # steps done before the signal
TINY = (["--device=cpu", "--data=random:1"] + TINY_MODEL
        + ["--batch_size=8", "--threads=1", "--log_every=10", f"--steps={STEPS}"])
DAEMONS = ("munged", "slurmctld", "slurmd")
T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:5.1f}s] {msg}", flush=True)


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Cluster:
    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = {}
        self.conf = f"{tmp}/etc/slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        for k in list(self.env):  # a job around this test must not leak into ours
            if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF":
                del self.env[k]

    def sh(self, *args, check_rc=True, timeout=30):
        p = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check_rc and p.returncode != 0:
            raise Fail(f"{' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def spawn(self, name, args):
        out = open(f"{self.tmp}/log/{name}.out", "w")
        self.procs[name] = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        with open(f"{self.tmp}/run/{name}.saved-pid", "w") as f:
            f.write(f"{self.procs[name].pid}\n")

    def alive(self, name):
        check(self.procs[name].poll() is None,
              f"{name} exited {self.procs[name].returncode}:\n{self.tail(f'log/{name}.out')}")

    def tail(self, rel, n=40):
        try:
            with open(f"{self.tmp}/{rel}", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError as e:
            return f"({e})"

    def start(self):
        t = self.tmp
        for d in ("etc", "key", "run", "log", "state", "spool", "job", "tmp", "pmix"):
            os.makedirs(f"{t}/{d}")
        # munged checks the folders on the way to its socket (everyone may enter them) and to its
        # key (nobody else may read it).
        os.chmod(t, 0o755)
        os.chmod(f"{t}/run", 0o755)
        os.chmod(f"{t}/key", 0o700)
        with open(f"{t}/key/munge.key", "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(f"{t}/key/munge.key", 0o400)
        sock = f"{t}/run/munge.sock"
        self.spawn("munged", ["munged", "-F", f"--socket={sock}", f"--key-file={t}/key/munge.key",
                              f"--log-file={t}/log/munged.log", f"--pid-file={t}/run/munged.pid",
                              f"--seed-file={t}/key/munged.seed"])
        deadline = time.time() + 10
        while not os.path.exists(sock):
            self.alive("munged")
            check(time.time() < deadline, "munged made no socket in 10 s")
            time.sleep(0.05)
        cred = subprocess.run(["munge", "-S", sock, "-n"], capture_output=True, timeout=10)
        p = subprocess.run(["unmunge", "-S", sock], input=cred.stdout, capture_output=True, timeout=10)
        check(p.returncode == 0, f"munge -n | unmunge failed: {p.stderr.decode()}")

        # The node line is slurmd -C's first line, at 127.0.0.1.
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True,
                              timeout=30).stdout.splitlines()[0]
        name = re.match(r"NodeName=(\S+)", node).group(1)
        node = node.replace(f"NodeName={name}", f"NodeName={name} NodeAddr=127.0.0.1", 1)
        ctld_port, d_port = free_ports(2)
        first_job = 1000 + int.from_bytes(os.urandom(2), "little")
        with open(self.conf, "w") as f:
            f.write(f"""# written by tests/slurm/test_slurm.py
ClusterName=samouttest
SlurmctldHost={name}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire=10
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
MinJobAge=30
KillWait=5
InactiveLimit=0
StateSaveLocation={t}/state
SlurmdSpoolDir={t}/spool
SlurmctldPidFile={t}/run/slurmctld.pid
SlurmdPidFile={t}/run/slurmd.pid
SlurmctldLogFile={t}/log/slurmctld.log
SlurmdLogFile={t}/log/slurmd.log
TmpFS={t}/tmp
FirstJobId={first_job}
{node}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        # PMIx's per-step folders (PMIxCliTmpDirBase/spmix_appdir_UID_JOB.STEP, /tmp by default)
        # stay here too: another test's job of the same number must not find them.
        with open(f"{t}/etc/mpi.conf", "w") as f:
            f.write(f"PMIxCliTmpDirBase={t}/pmix\n")
        self.spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", self.conf])
        self.spawn("slurmd", ["slurmd", "-D", "-f", self.conf, "-N", name])
        deadline = time.time() + 30
        while True:
            for d in DAEMONS:
                self.alive(d)
            state = self.sh("sinfo", "-h", "-o", "%T", check_rc=False).strip()
            if state == "idle":
                return
            check(time.time() < deadline, f"the node is not idle after 30 s (sinfo: {state!r})\n"
                  f"{self.tail('log/slurmctld.log')}\n{self.tail('log/slurmd.log')}")
            time.sleep(0.2)

    def job(self, jobid):
        """scontrol show job's fields, or {} once the job is gone."""
        out = self.sh("scontrol", "show", "job", "-o", jobid, check_rc=False)
        return dict(re.findall(r"(\w+)=(\S*)", out)) if "JobId=" in out else {}

    def stop(self):
        # The job first (its ranks would outlive slurmd under proctrack/linuxproc), then the
        # daemons by the PIDs saved when they started, slurmd and slurmctld before munged.
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self.sh("scancel", "--user=root", "--partition=debug", check_rc=False)
            deadline = time.time() + 15
            while time.time() < deadline and self.sh("squeue", "-h", check_rc=False).strip():
                time.sleep(0.3)
        for name in ("slurmd", "slurmctld", "munged"):
            if name == "munged":  # after slurmctld, which ends its own slurmscriptd
                self.kill_job_processes()
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            t = time.time()
            p.terminate()
            try:
                p.wait(timeout=10)
                log(f"{name} stopped in {time.time() - t:.1f}s")
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def kill_job_processes(self):
        """Last resort: processes that still carry this test's SLURM_CONF (batch shells, srun,
        slurmstepd, ranks) were started by this test's Slurm: end them by PID."""
        mine = f"SLURM_CONF={self.conf}".encode()
        daemons = {p.pid for p in self.procs.values()}
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) in daemons or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if mine not in f.read().split(b"\0"):
                        continue
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    what = f.read().replace(b"\0", b" ").decode(errors="replace")[:160]
            except OSError:
                continue
            log(f"left over: process {pid}: {what}")
            left.append(int(pid))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(1)


def steps_done(metrics):
    try:
        with open(metrics) as f:
            return max((json.loads(l).get("step", 0) for l in f if l.strip()), default=0)
    except (OSError, ValueError):
        return 0


def run_test(a, c):
    t = c.tmp
    c.start()
    log("munged, slurmctld and slurmd are up; the node is idle")

    ck, metrics, out = f"{t}/job/ckpt", f"{t}/job/metrics.jsonl", f"{t}/job/slurm-%j.out"
    env = dict(c.env, SAMOUT_ROOT=a.root, SAMOUT_BIN=a.bin, SAMOUT_FLAGS="", SAMOUT_DEVICE="cpu",
               SAMOUT_CKPT_DIR=ck, SAMOUT_CKPT_EVERY="0", SAMOUT_LAUNCHER=a.launcher,
               SAMOUT_ARGS=" ".join(TINY + [f"--metrics_file={metrics}"]))
    # The users' script as it is; only what a 2-CPU node without GPUs needs is overridden.
    sub = subprocess.run(["sbatch", "--parsable", "--job-name=samout-test", "--nodes=1",
                          "--ntasks-per-node=2", "--gpus-per-node=0", "--time=10", f"--output={out}",
                          f"--chdir={t}/job", f"{a.root}/launch/slurm/{a.script}"],
                         env=env, capture_output=True, text=True, timeout=30)
    check(sub.returncode == 0, f"sbatch failed: {sub.stderr}")
    jobid = sub.stdout.strip().split(";")[0]
    out = out.replace("%j", jobid)
    c.outfile = out
    log(f"submitted job {jobid}")

    deadline = time.time() + 40
    while steps_done(metrics) < SIGNAL_AT:
        j = c.job(jobid)
        check(j.get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"),
              f"job {jobid} is {j.get('JobState')} before it was signalled")
        check(time.time() < deadline, f"job {jobid} did not train {SIGNAL_AT} steps in 40 s")
        time.sleep(0.1)
    c.sh("scancel", "--signal=USR1", "--batch", jobid)
    log(f"job trains (step {steps_done(metrics)}): sent scancel --signal=USR1 --batch {jobid}")

    seen, deadline = set(), time.time() + 60
    while True:
        j = c.job(jobid)
        state = j.get("JobState", "GONE")
        if state not in seen:
            seen.add(state)
            log(f"job {jobid}: {state}, Restarts={j.get('Restarts')}, step {steps_done(metrics)}")
        if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED",
                         "REQUEUE_HOLD", "REQUEUE_FED"):
            break
        check(time.time() < deadline, f"job {jobid} not done 60 s after the signal ({state})")
        time.sleep(0.2)

    with open(out, errors="replace") as f:
        text = f.read()
    check(state == "COMPLETED", f"job {jobid} ended {state} (ExitCode={j.get('ExitCode')})")
    check(j.get("ExitCode") == "0:0", f"job exit code {j.get('ExitCode')}")
    check(j.get("Restarts") == "1", f"Restarts={j.get('Restarts')}, expected 1")
    check("SLURM_RESTART_COUNT=0" in text and "SLURM_RESTART_COUNT=1" in text,
          "the output does not show a first run and a requeued run")
    check("got SIGUSR1" in text, "the batch shell did not see the USR1")
    m = re.search(r"preempted by signal 10 at step (\d+): checkpoint saved, resume me", text)
    check(m, "the ranks were not preempted by USR1")
    k = int(m.group(1))
    check(SIGNAL_AT <= k < STEPS, f"preempted at step {k}")
    check("trainer checkpointed (exit 75): requeueing" in text, "the script did not requeue")
    check(f"resumed from {ck}/step_{k:08d}" in text, f"the requeued run did not resume from step {k}")
    check(f"done: {STEPS} steps" in text, f"the requeued run did not finish {STEPS} steps")
    check(text.index(m.group(0)) < text.index("SLURM_RESTART_COUNT=1") < text.index("resumed from"),
          "preemption, requeue and resume are out of order")
    check(steps_done(metrics) == STEPS, f"metrics end at step {steps_done(metrics)}")
    saved = sorted(d for d in os.listdir(ck) if d.startswith("step_"))
    check(f"step_{STEPS:08d}" in saved, f"no final checkpoint in {ck}: {saved}")
    log(f"PASS: preempted at step {k} (checkpoint step_{k:08d}), requeued (Restarts=1), "
        f"resumed from step {k}, finished {STEPS} steps, COMPLETED 0:0")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="samout_ddp")
    ap.add_argument("--root", required=True, help="the repository (holds launch/slurm)")
    ap.add_argument("--script", default="train.sbatch", help="or train-multinode.sbatch")
    ap.add_argument("--launcher", default="srun", help="SAMOUT_LAUNCHER: srun or mpirun")
    a = ap.parse_args()
    a.bin, a.root = os.path.abspath(a.bin), os.path.abspath(a.root)

    if os.geteuid() != 0:
        skip("slurmd must run as root to launch jobs, and this test is not root")
    missing = [p for p in DAEMONS + ("sbatch", "srun", "scontrol", "munge", "unmunge")
               if not shutil.which(p)]
    if missing:  # setup.sh installs them: on CI this is a failure, not a skip
        print(f"FAIL: {', '.join(missing)} not found: run launch/setup.sh (slurm-wlm, munge)")
        return 1

    # ctest's timeout sends SIGTERM: clean up as on any other failure.
    def on_term(sig, _):
        raise Fail(f"stopped by signal {sig}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    tmp = tempfile.mkdtemp(prefix="samout-slurm-")
    c = Cluster(tmp)
    c.outfile = None
    rc = 0
    try:
        run_test(a, c)
    except (Fail, subprocess.TimeoutExpired, OSError) as e:
        rc = 1
        print(f"FAIL: {e}")
        if c.outfile:
            print(f"--- job output {c.outfile} (last lines) ---\n{c.tail(os.path.relpath(c.outfile, tmp), 60)}")
        for name in ("slurmctld.log", "slurmd.log"):
            print(f"--- {name} (last lines) ---\n{c.tail('log/' + name, 25)}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        c.stop()
        if os.environ.get("SAMOUT_SLURM_KEEP") == "1":
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log("daemons stopped, cleaned up")
    return rc


if __name__ == "__main__":
    sys.exit(main())
