# The body of train.sbatch and train-multinode.sbatch (they source it; see README.md here).
# Launches samout_ddp on every task of the allocation, turns the scheduler's warning signal into a
# checkpoint, and requeues the job when the trainer exits 75 ("checkpoint saved, resume me"); the
# requeued job resumes from the newest checkpoint (--resume=auto).
#
# Settings (environment; sbatch passes the submitting shell's environment to the job):
#   SAMOUT_ROOT          the repository (default: the folder sbatch was called from)
#   SAMOUT_BIN           trainer binary (default: $SAMOUT_ROOT/build/bin/samout_ddp)
#   SAMOUT_FLAGS         flagfile (default: $SAMOUT_ROOT/configs/big.flags; empty: none)
#   SAMOUT_ARGS          extra trainer flags, split on spaces; arguments given to the sbatch script
#                        come after them, and the last occurrence of a flag wins
#   SAMOUT_CKPT_DIR      checkpoint folder (default: $SAMOUT_ROOT/runs/$SLURM_JOB_NAME/ckpt)
#   SAMOUT_CKPT_EVERY    steps between periodic checkpoints (default: 500; 0 = only on preemption
#                        and at the end)
#   SAMOUT_DEVICE        cpu: CPU ranks (adds --device=cpu; used by the test on a GPU-less node)
#   SAMOUT_LAUNCHER      srun (default: srun --mpi=pmix) or mpirun
#   SAMOUT_LAUNCHER_ARGS extra arguments for srun or mpirun, split on spaces
#   SAMOUT_REQUEUE       1 (default): requeue on exit 75; 0: exit 75 and let the user resubmit
#   SAMOUT_MAX_RESTARTS  stop requeueing after this many restarts (default: 1000)
set -uo pipefail

samout_log() { echo "samout-slurm: $(date '+%F %T') $*"; }

BIN="${SAMOUT_BIN:-$ROOT/build/bin/samout_ddp}"
FLAGS="${SAMOUT_FLAGS-$ROOT/configs/big.flags}"
CKPT_DIR="${SAMOUT_CKPT_DIR:-$ROOT/runs/${SLURM_JOB_NAME:-samout}/ckpt}"
LAUNCHER="${SAMOUT_LAUNCHER:-srun}"
read -r -a extra_args <<< "${SAMOUT_ARGS:-}"
read -r -a launcher_args <<< "${SAMOUT_LAUNCHER_ARGS:-}"

if [ ! -x "$BIN" ]; then
  samout_log "error: trainer $BIN not found (build it, or set SAMOUT_BIN)"
  exit 2
fi
if [ -n "$FLAGS" ] && [ ! -f "$FLAGS" ]; then
  samout_log "error: flagfile $FLAGS not found (set SAMOUT_FLAGS)"
  exit 2
fi

args=()
[ -n "$FLAGS" ] && args+=("--flagfile=$FLAGS")
args+=("--ckpt_dir=$CKPT_DIR" "--ckpt_every=${SAMOUT_CKPT_EVERY:-500}" "--resume=auto")
[ "${SAMOUT_DEVICE:-}" = cpu ] && args+=("--device=cpu")
args+=("${extra_args[@]}" "$@")

case "$LAUNCHER" in
  srun)
    # --wait: once one task has ended, the others get 120 s to end too (they end together on a
    # preemption; a crashed rank must not leave the rest waiting in a collective until the limit).
    cmd=(srun --mpi=pmix --wait=120 "${launcher_args[@]}" "$BIN" "${args[@]}") ;;
  mpirun)
    if [ "$(id -u)" -eq 0 ]; then  # Open MPI refuses root unless told twice
      export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    cmd=(mpirun -np "${SLURM_NTASKS:?}" "${launcher_args[@]}" "$BIN" "${args[@]}") ;;
  *)
    samout_log "error: SAMOUT_LAUNCHER must be srun or mpirun, not '$LAUNCHER'"
    exit 2 ;;
esac

samout_log "job ${SLURM_JOB_ID:-?} SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0} on" \
  "${SLURM_JOB_NUM_NODES:-?} node(s) (${SLURM_JOB_NODELIST:-?}), ${SLURM_NTASKS:-?} tasks," \
  "checkpoints in $CKPT_DIR"
samout_log "running: ${cmd[*]}"

# The job step runs in the background: bash runs a trap only while it waits, and forwarding the
# signal is all the trap does. USR1 (--signal=B:USR1@120, or scancel --signal=USR1 --batch) and
# TERM (scancel, preemption) both become a USR1 to srun/mpirun, which pass it to every rank; the
# ranks finish their step, save a checkpoint together and exit 75. USR1 and not TERM: a second
# TERM would make the ranks exit at once, and on scancel/preemption they already got one.
CHILD=""
signalled=0
samout_forward() {
  signalled=1
  samout_log "got SIG$1: asking the ranks to checkpoint and stop"
  [ -n "$CHILD" ] && kill -USR1 "$CHILD" 2>/dev/null
}
samout_cleanup() {  # never leave the step behind (proctrack/linuxproc would let it run on)
  if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
    kill -TERM "$CHILD" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$CHILD" 2>/dev/null
    wait "$CHILD" 2>/dev/null
  fi
}
trap 'samout_forward USR1' USR1
trap 'samout_forward TERM' TERM
trap samout_cleanup EXIT

"${cmd[@]}" &
CHILD=$!
while :; do
  signalled=0
  wait "$CHILD"
  rc=$?
  # A trap interrupts wait (rc > 128): the step is still running, or has just ended and wait
  # returns its status next time.
  [ "$signalled" = 1 ] || break
done
CHILD=""

case "$rc" in
  0)
    samout_log "trainer finished"
    exit 0 ;;
  75)
    restarts="${SLURM_RESTART_COUNT:-0}"
    if [ "${SAMOUT_REQUEUE:-1}" != 1 ]; then
      samout_log "trainer checkpointed (exit 75); SAMOUT_REQUEUE=0: resubmit to resume"
      exit 75
    fi
    if [ "$restarts" -ge "${SAMOUT_MAX_RESTARTS:-1000}" ]; then
      samout_log "trainer checkpointed (exit 75); $restarts restarts already: not requeueing"
      exit 75
    fi
    samout_log "trainer checkpointed (exit 75): requeueing job $SLURM_JOB_ID to resume"
    if scontrol requeue "$SLURM_JOB_ID"; then
      exit 0
    fi
    samout_log "scontrol requeue failed (job cancelled, or not requeueable): resubmit to resume"
    exit 75 ;;
  *)
    samout_log "trainer failed with exit code $rc"
    exit "$rc" ;;
esac
