#!/usr/bin/env bash
# The README's main command: sets up, builds, prepares the sample corpus, and trains SamOut on it
# with two CPU ranks under mpirun (configs/cpu.flags). Extra arguments go to samout_ddp.
#   bash launch/train.sh [--steps=50 ...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/launch/build.sh"
bash "$ROOT/data/make_sample.sh"
cd "$ROOT"
if [ "$(id -u)" -eq 0 ]; then  # Open MPI refuses root unless told twice
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
NP="${SAMOUT_NP:-2}"
exec mpirun --oversubscribe -np "$NP" build/bin/samout_ddp --flagfile=configs/cpu.flags "$@"
