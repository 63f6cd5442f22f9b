#!/usr/bin/env bash
# gpu_check.sh: the one script a person with a single NVIDIA GPU runs to check samout there.
#
#   bash launch/gpu_check.sh --prepare      on the dev machine (Debian 12, no GPU needed): gathers the
#                                           Debian packages the GPU machine lacks, and the sample
#                                           corpus, into .gpu-debs/ (git-ignored; < 64 MiB), then
#                                           checks the configure step against them unpacked
#   bash launch/gpu_check.sh [--out=DIR]    on the GPU machine, from the repository root, with
#                                           .gpu-debs/ copied along: builds, tests, benchmarks
#
# On the GPU machine it unpacks .gpu-debs/*.deb into a private prefix (never into /), configures
# and builds with every core (Release, the card's architecture: sm_90 on an H200), then runs, each
# stage under its own timeout (a slow or hung stage cannot eat the budget; one that fails does not
# stop the others), printing as it goes:
#   1. ctest -L gpu (without the two below)          5. samout_ddp tokens/s, seed model: B=32 T=1024
#   2. compute-sanitizer memcheck on the op tests       bf16, B=32 T=49 fp32, B=4 T=8192 bf16
#   3. the sync-debug training test                  6. batch-1 decode tokens/s, CUDA graphs
#   4. 2 ranks --comm=mpi on one GPU vs 1 rank       7. bench_cummax_gate on CUDA
#                                                    8. PyTorch peers on the same GPU (eager fp32 and
#                                                       bf16, torch.compile, eager stateful decode)
# After every stage it rewrites <out>/results.md (the table: status, figures, samout over the
# strongest PyTorch variant at the same shape) and <out>/results.json (every figure), so a run cut
# short keeps what it measured; each stage's log is in <out>/logs/. The table is printed again at
# the end, with the total wall time. Default <out>: $OUT when set (the device runner's folder),
# else runs/gpu_check-<date>. The whole run fits in --budget seconds (default 525: the target is
# 9 minutes on one H200 with 16 cores); a stage that would not fit is recorded as skipped.
#
# Options: --out=DIR  --build=DIR (default build-gpu; reused by a rerun)  --budget=SECONDS
#          --jobs=N (default: every core)  --python=PATH (the python with torch; default: the first
#          of python3, /opt/torch/.venv/bin/python3, .venv/bin/python that imports torch)
#          --only=ID,... / --skip=ID,... (stage ids or groups, see STAGES below: e.g.
#          --skip=configure,build --only=peers reruns the PyTorch peers on an existing build)
#          --cap=ID:SECONDS (another timeout for one stage; repeatable)
#          --no_prewarm (do not warm torch.compile's cache in the background during the build)
#          --prepare [--no_verify] [--verify_build=DIR (default /tmp/gpucheck-build)]
# Exit status: 0 when every stage passed; 1 when one failed, timed out or was skipped; 2 when it
# could not start: no GPU (one line), bad arguments. GPU_CHECK_ASSUME_GPU=1 skips the GPU probe and
# GPU_CHECK_SYSROOT moves the private prefix (both for its tests, tests/launch/).
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEBS="$ROOT/.gpu-debs"
REPORT="$ROOT/launch/gpu_check_report.py"
# What the build needs (CMakeLists.txt, src/*/CMakeLists.txt) that the GPU machine (Ubuntu 24.04)
# lacks: gflags, glog (+ libunwind), SentencePiece, nlohmann-json, xxHash; and pkgconf, used only
# where the machine has no pkg-config. Debian 12's libraries need glibc 2.36; Ubuntu 24.04 has 2.39.
DEB_PACKAGES=(libgflags-dev libgflags2.2 libgoogle-glog-dev libgoogle-glog0v6 libunwind8
  libunwind-dev libsentencepiece-dev libsentencepiece0 nlohmann-json3-dev libxxhash-dev libxxhash0
  pkgconf-bin libpkgconf3)
DEBS_LIMIT_MB=64
MULTIARCH=x86_64-linux-gnu

MODE=check OUT_DIR="" BUILD="$ROOT/build-gpu" BUDGET=525 JOBS="" PY="" ONLY="" SKIP=""
PREWARM=1 VERIFY=1 VERIFY_BUILD=/tmp/gpucheck-build CAPS=","
usage() { sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
for arg in "$@"; do
  case "$arg" in
    --prepare) MODE=prepare ;;
    --no_verify|--no-verify) VERIFY=0 ;;
    --verify_build=*) VERIFY_BUILD="${arg#*=}" ;;
    --out=*) OUT_DIR="${arg#*=}" ;;
    --build=*) BUILD="${arg#*=}" ;;
    --budget=*) BUDGET="${arg#*=}" ;;
    --jobs=*) JOBS="${arg#*=}" ;;
    --python=*) PY="${arg#*=}" ;;
    --only=*) ONLY=",${arg#*=}," ;;
    --skip=*) SKIP=",${arg#*=}," ;;
    --no_prewarm|--no-prewarm) PREWARM=0 ;;
    --cap=*:*) CAPS="$CAPS${arg#*=}," ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check: --budget must be whole seconds" >&2; exit 2 ;; esac
[ -n "$JOBS" ] || JOBS="$(nproc)"

# ---- helpers shared by both modes -------------------------------------------------------------------

# The first python3 that imports torch: --python, $SAMOUT_PYTHON, python3 on PATH, the GPU
# machine's /opt/torch/.venv, the project's .venv.
find_python() {
  local c
  for c in "$PY" "${SAMOUT_PYTHON:-}" "$(command -v python3 2>/dev/null)" /opt/torch/.venv/bin/python3 \
           "$ROOT/.venv/bin/python"; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    if timeout 120 "$c" -c "import torch" >/dev/null 2>&1; then echo "$c"; return 0; fi
  done
  return 1
}

# Unpacks the .debs into $1 (a private prefix) and rewrites their pkg-config files to point there
# (pkg_check_modules then finds headers and libraries in the prefix on any pkg-config, with no
# PKG_CONFIG_SYSROOT_DIR, whose filtering of "system" -I/-L paths differs between implementations).
unpack_sysroot() {
  local sys="$1" f
  rm -rf "$sys" && mkdir -p "$sys" || return 1
  for f in "$DEBS"/*.deb; do
    dpkg-deb -x "$f" "$sys" 2>/dev/null || { mkdir -p "$sys.ar" && (cd "$sys.ar" && ar x "$f" &&
      tar -xf data.tar.* -C "$sys") && rm -rf "$sys.ar"; } || { echo "gpu_check: cannot unpack $f" >&2; return 1; }
  done
  for f in "$sys"/usr/lib/$MULTIARCH/pkgconfig/*.pc "$sys"/usr/share/pkgconfig/*.pc; do
    [ -f "$f" ] && sed -i -e "s#=/usr#=$sys/usr#" -e "s#-I/usr/#-I$sys/usr/#g" -e "s#-L/usr/#-L$sys/usr/#g" "$f"
  done
  return 0
}

# The environment a build against the prefix needs: libraries at run time, its .pc files first,
# and its pkgconf where the machine has no pkg-config.
sysroot_env() {
  local sys="$1"
  export LD_LIBRARY_PATH="$sys/usr/lib/$MULTIARCH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PKG_CONFIG_PATH="$sys/usr/lib/$MULTIARCH/pkgconfig:$sys/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  unset PKG_CONFIG_SYSROOT_DIR
  PKGCONF_ARGS=()
  if [ -n "${GPU_CHECK_USE_PKGCONF:-}" ] || ! command -v pkg-config >/dev/null 2>&1; then
    PKGCONF_ARGS=(-DPKG_CONFIG_EXECUTABLE="$sys/usr/bin/pkgconf")
  fi
}

# configure_cmd BUILD SYSROOT PYTHON [ARCH]: sets CONFIGURE_CMD, the one configure command of both modes.
configure_cmd() {
  local build="$1" sys="$2" py="$3" arch="${4:-90}" tp gen=()
  tp="$(timeout 120 "$py" -c "import torch;print(torch.utils.cmake_prefix_path)" 2>/dev/null)" || return 1
  if [ ! -f "$build/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi
  # SAMOUT_CUDA_WERROR=OFF: CI already fails on a register spill or a host-code warning (same
  # nvcc); here another gcc's new warning in a torch header must not cost the GPU minutes.
  CONFIGURE_CMD=(cmake -S "$ROOT" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release
    -DSAMOUT_CUDA_WERROR=OFF -DSAMOUT_PYTHON="$py" -DCMAKE_PREFIX_PATH="$tp;$sys/usr"
    -DCMAKE_MODULE_PATH="$sys/usr/share/glog/cmake" -DCMAKE_CUDA_ARCHITECTURES="$arch" "${PKGCONF_ARGS[@]}")
}

# Every dependency the GPU machine lacks must resolve inside the prefix: the cache says where.
check_cache() {
  local build="$1" sys="$2" bad=0 key val
  for key in gflags_DIR glog_DIR nlohmann_json_DIR Unwind_LIBRARY pkgcfg_lib_SENTENCEPIECE_sentencepiece \
             pkgcfg_lib_XXHASH_xxhash SENTENCEPIECE_INCLUDE_DIRS XXHASH_INCLUDE_DIRS; do
    val="$(grep -E "^$key:[A-Z]+=" "$build/CMakeCache.txt" | head -1 | cut -d= -f2-)"
    if [ -n "$val" ] && [ "${val#"$sys"/}" != "$val" ]; then
      echo "  ok   $key = $val"
    else
      echo "  BAD  $key = ${val:-<not set>} (expected under $sys)"; bad=1
    fi
  done
  return $bad
}

# ---- --prepare: on the dev machine ---------------------------------------------------------------------
if [ "$MODE" = prepare ]; then
  command -v apt-get >/dev/null || { echo "gpu_check --prepare: needs apt-get (Debian 12)" >&2; exit 2; }
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "gpu_check --prepare: downloading ${#DEB_PACKAGES[@]} Debian packages"
  if ! (cd "$tmp" && apt-get download "${DEB_PACKAGES[@]}" >/dev/null 2>"$tmp/err"); then
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq >/dev/null 2>&1
      (cd "$tmp" && apt-get download "${DEB_PACKAGES[@]}" >/dev/null 2>"$tmp/err") ||
        { cat "$tmp/err" >&2; echo "gpu_check --prepare: apt-get download failed" >&2; exit 1; }
    else
      cat "$tmp/err" >&2; echo "gpu_check --prepare: apt-get download failed (try: sudo apt-get update)" >&2; exit 1
    fi
  fi
  mkdir -p "$DEBS"
  rm -f "$DEBS"/*.deb
  mv "$tmp"/*.deb "$DEBS"/
  # The sample corpus: the GPU training tests need it (fixture sample_corpus), and the GPU machine
  # has no fortune packages to make it from.
  if [ -x "$ROOT/build/bin/samout_prep" ] || [ -f "$ROOT/data/sample/tokenizer.model" ]; then
    SAMOUT_PREP="${SAMOUT_PREP:-$ROOT/build/bin/samout_prep}" bash "$ROOT/data/make_sample.sh" >/dev/null ||
      echo "gpu_check --prepare: warning: data/make_sample.sh failed; the GPU training tests will fail" >&2
  fi
  rm -rf "$DEBS/sample"
  if [ -f "$ROOT/data/sample/tokenizer.model" ]; then
    mkdir -p "$DEBS/sample" && cp -p "$ROOT"/data/sample/*.h5 "$ROOT"/data/sample/tokenizer.* \
      "$ROOT"/data/sample/.inputs.sha256 "$DEBS/sample/" 2>/dev/null
    cp -p "$ROOT"/data/sample/*.json "$DEBS/sample/" 2>/dev/null
  else
    echo "gpu_check --prepare: warning: no data/sample (build first: bash launch/build.sh); the GPU" \
         "training tests will fail on the GPU machine" >&2
  fi
  {
    echo "# gpu_check --prepare, $(date -Iseconds), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    for f in "$DEBS"/*.deb; do
      echo "$(basename "$f") $(stat -c %s "$f") $(sha256sum "$f" | cut -d' ' -f1)"
    done
  } > "$DEBS/MANIFEST.txt"
  kb="$(du -sk "$DEBS" | cut -f1)"
  echo "gpu_check --prepare: $DEBS holds $(ls "$DEBS"/*.deb | wc -l) .deb files$( [ -d "$DEBS/sample" ] &&
       echo " and the sample corpus"), $kb KiB in all (limit ${DEBS_LIMIT_MB} MiB)"
  if [ "$kb" -ge $((DEBS_LIMIT_MB * 1024)) ]; then
    echo "gpu_check --prepare: $DEBS is over ${DEBS_LIMIT_MB} MiB" >&2; exit 1
  fi
  if [ "$VERIFY" = 1 ]; then
    # The GPU machine's recipe, here: unpack into a fresh prefix and configure a scratch build
    # against it; the cache must point into the prefix for every package that machine lacks.
    vpy="$(find_python)" || { echo "gpu_check --prepare: no python with torch here: configure not checked" >&2; exit 0; }
    sys="$tmp/sysroot"
    unpack_sysroot "$sys" || exit 1
    sysroot_env "$sys"
    rm -rf "$VERIFY_BUILD"
    echo "gpu_check --prepare: configuring $VERIFY_BUILD against $sys (log $VERIFY_BUILD.log)"
    configure_cmd "$VERIFY_BUILD" "$sys" "$vpy" || { echo "gpu_check --prepare: $vpy has no torch CMake prefix" >&2; exit 1; }
    echo "  ${CONFIGURE_CMD[*]}"
    if ! "${CONFIGURE_CMD[@]}" >"$VERIFY_BUILD.log" 2>&1; then
      tail -20 "$VERIFY_BUILD.log" >&2; echo "gpu_check --prepare: configure FAILED" >&2; exit 1
    fi
    check_cache "$VERIFY_BUILD" "$sys" || { echo "gpu_check --prepare: configure used the system's copies" >&2; exit 1; }
    rm -rf "$VERIFY_BUILD"
    echo "gpu_check --prepare: configure against the unpacked packages: ok"
  fi
  echo "gpu_check --prepare: done; copy .gpu-debs/ along with the repository (the device runner: carry .gpu-debs)"
  exit 0
fi

# ---- on the GPU machine: is there a GPU? -----------------------------------------------------------------
no_gpu() {
  echo "gpu_check: no NVIDIA GPU on this machine ($1); run it on a GPU machine, or use --prepare here" >&2
  exit 2
}
if [ "${GPU_CHECK_ASSUME_GPU:-0}" = 1 ]; then
  [ -n "$PY" ] || PY="$(find_python)" || { echo "gpu_check: no python3 with torch (--python=)" >&2; exit 2; }
else
  command -v nvidia-smi >/dev/null 2>&1 || no_gpu "nvidia-smi not found"
  GPU_LINES="$(timeout 60 nvidia-smi -L 2>/dev/null | grep -E '^GPU [0-9]+:')"
  [ -n "$GPU_LINES" ] || no_gpu "nvidia-smi found none"
  PY="$(find_python)" || no_gpu "no python3 with torch to check CUDA from; give one with --python="
  timeout 120 "$PY" -c "import sys,torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1 ||
    no_gpu "nvidia-smi lists one but torch.cuda.is_available() is False in $PY"
fi

# ---- set-up ---------------------------------------------------------------------------------------------
T_START=$(date +%s)
DEADLINE=$((T_START + BUDGET))
if [ -z "$OUT_DIR" ]; then
  if [ -n "${OUT:-}" ]; then OUT_DIR="$OUT"; else OUT_DIR="$ROOT/runs/gpu_check-$(date +%Y%m%d-%H%M%S)"; fi
fi
mkdir -p "$OUT_DIR/logs" || { echo "gpu_check: cannot create $OUT_DIR" >&2; exit 2; }
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOGS="$OUT_DIR/logs"
RPY="$(command -v python3 || echo "$PY")"   # the report helper needs only the standard library
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
cd "$ROOT" || exit 2
# The card's architecture for nvcc (9.0 -> 90; the H200 is sm_90).
ARCH="${GPU_CHECK_CUDA_ARCH:-$(timeout 30 nvidia-smi --query-gpu=compute_cap --format=csv,noheader -i 0 2>/dev/null | tr -d ' .')}"
case "$ARCH" in ''|*[!0-9]*) ARCH=90 ;; esac

# Stages: id|title|cap seconds|floor seconds. A stage's timeout is its cap, cut so that every later
# stage can still have its floor; a stage left less than its floor is skipped.
STAGES=(
  "configure|configure (cmake, Release, sm_$ARCH)|150|15"
  "build|build|360|60"
  "gpu_ctest|1 ctest -L gpu|180|20"
  "memcheck|2 compute-sanitizer memcheck, op tests|150|20"
  "sync_free|3 training under sync-debug=error|120|15"
  "mpi_two_ranks|4 2 ranks --comm=mpi on 1 GPU vs 1 rank|150|15"
  "train_32x1024_bf16|5 samout train B=32 T=1024 bf16|90|15"
  "train_32x49_fp32|5 samout train B=32 T=49 fp32|90|10"
  "train_4x8192_bf16|5 samout train B=4 T=8192 bf16|90|10"
  "decode|6 samout decode batch 1, CUDA graph|90|10"
  "opbench|7 bench_cummax_gate (CUDA)|120|15"
  "peer_32x1024_fp32|8 PyTorch B=32 T=1024 fp32 eager|90|15"
  "peer_32x1024_bf16|8 PyTorch B=32 T=1024 bf16 eager, fused Adam|90|15"
  "peer_32x49_fp32|8 PyTorch B=32 T=49 fp32 eager + decode|90|15"
  "peer_32x49_compile|8 PyTorch B=32 T=49 fp32 compile reduce-overhead, fused Adam|240|45"
  "peer_4x8192_bf16|8 PyTorch B=4 T=8192 bf16 eager, fused Adam|90|15"
)
# --only/--skip take ids or their prefixes' groups: train, peer, ...
wanted() {
  local id="$1" group="${1%%_*}"
  if [ -n "$ONLY" ] && [[ "$ONLY" != *",$id,"* && "$ONLY" != *",$group,"* && "$ONLY" != *",${group}s,"* ]]; then
    case "$id" in configure|build) ;; *) return 1 ;; esac
  fi
  [[ -n "$SKIP" && ( "$SKIP" == *",$id,"* || "$SKIP" == *",$group,"* || "$SKIP" == *",${group}s,"* ) ]] && return 1
  return 0
}
field() { local IFS='|' parts; read -r -a parts <<< "$1"; echo "${parts[$(($2 - 1))]}"; }
stage_line() { local s; for s in "${STAGES[@]}"; do [ "$(field "$s" 1)" = "$1" ] && { echo "$s"; return; }; done; }
title_of() { field "$(stage_line "$1")" 2; }

report() { "$RPY" "$REPORT" --out "$OUT_DIR" "$@"; }

# timeout_for ID [ONLY_LATER_IDS_MATCHING]: seconds stage ID may take now.
timeout_for() {
  local id="$1" pattern="${2:-}" after=0 reserve=0 s sid cap now left
  for s in "${STAGES[@]}"; do
    sid="$(field "$s" 1)"
    # shellcheck disable=SC2053  # $pattern is a glob on purpose
    if [ "$after" = 1 ] && wanted "$sid" && [[ -z "$pattern" || "$sid" == $pattern ]]; then
      reserve=$((reserve + $(field "$s" 4)))
    fi
    [ "$sid" = "$id" ] && { after=1; cap="$(cap_of "$id")"; }
  done
  now=$(date +%s)
  left=$((DEADLINE - now - reserve))
  [ "$left" -lt "$cap" ] && cap=$left
  echo "$cap"
}
cap_of() {
  if [[ "$CAPS" == *",$1:"* ]]; then local c="${CAPS#*,"$1":}"; echo "${c%%,*}"; else field "$(stage_line "$1")" 3; fi
}
floor_of() { local f c; f="$(field "$(stage_line "$1")" 4)"; c="$(cap_of "$1")"; echo $((c < f ? c : f)); }

# run_stage ID LOG CMD...: runs CMD under its timeout, output into LOG. Sets STATUS and SECS.
# Returns 1 (and records the stage as skipped) when it does not fit in the time left.
run_stage() {
  local id="$1" log="$2" t rc t0; shift 2
  t="$(timeout_for "$id" "${RESERVE_PATTERN:-}")"
  if [ "$t" -lt "$(floor_of "$id")" ]; then
    report stage "$id" --title "$(title_of "$id")" --status skipped --note "out of time (${t}s left for it)"
    return 1
  fi
  echo "gpu_check: -- $(title_of "$id") (timeout ${t}s; log ${log#"$OUT_DIR"/})"
  t0=$(date +%s)
  timeout -k 10 "$t" "$@" >"$log" 2>&1
  rc=$?
  SECS=$(( $(date +%s) - t0 ))
  case $rc in
    0) STATUS=pass ;;
    124|137) STATUS=timeout ;;
    *) STATUS=fail ;;
  esac
  if [ "$STATUS" != pass ]; then
    echo "gpu_check:    exit $rc after ${SECS}s; last lines of the log:"
    tail -n 15 "$log" | sed 's/^/    | /'
  fi
  return 0
}
skip_stage() { report stage "$1" --title "$(title_of "$1")" --status skipped --note "$2"; }

# nvidia-smi's memory.used every 200 ms while a run lasts (MiB, one a line).
SAMPLER=""
sampler_start() {
  : > "$1"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 200 >>"$1" 2>/dev/null &
  SAMPLER=$!
}
sampler_stop() { [ -n "$SAMPLER" ] && { kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; }; SAMPLER=""; }
PREWARM_PID=""
cleanup() {
  sampler_stop
  [ -n "$PREWARM_PID" ] && kill -- -"$PREWARM_PID" 2>/dev/null
}
trap cleanup EXIT
trap 'echo "gpu_check: interrupted"; exit 130' INT TERM

# ---- machine facts -----------------------------------------------------------------------------------
{
  echo "## nvidia-smi"; timeout 30 nvidia-smi
  echo "## torch"; timeout 60 "$PY" -c "import torch;print('torch', torch.__version__, torch.version.cuda, flush=True);print('device', torch.cuda.get_device_name(0))"
  echo "## nvcc"; timeout 30 nvcc --version
  echo "## cmake"; cmake --version | head -1
  echo "## compute-sanitizer"; command -v compute-sanitizer && timeout 30 compute-sanitizer --version | tail -1
  echo "## system packages (GPU-MACHINE.md)"; command -v mpirun pkg-config ninja
  ls /usr/include/hdf5.h /usr/include/nccl.h /usr/include/gflags /usr/include/glog 2>&1
  # shellcheck disable=SC2010
  ls /usr/lib/$MULTIARCH 2>/dev/null | grep -E 'gtest|hdf5|gflags|glog|sentencepiece|xxhash' | head -20
  echo "## nproc $(nproc)"; free -g | head -2
} > "$LOGS/env.log" 2>&1
IFS=, read -r CARD DRIVER MEMTOTAL < <(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv,noheader -i 0 2>/dev/null)
TORCH_INFO="$(grep -m1 '^torch ' "$LOGS/env.log" | awk '{print $2, $3}')"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
if [ -n "$COMMIT" ]; then
  [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | head -1)" ] && COMMIT="$COMMIT (with uncommitted changes)"
else
  COMMIT="unknown (no .git); prepared at: $(head -1 "$DEBS/MANIFEST.txt" 2>/dev/null | sed 's/.*commit //')"
fi
plan=()
for s in "${STAGES[@]}"; do wanted "$(field "$s" 1)" && plan+=(--plan "$(field "$s" 1)=$(field "$s" 2)"); done
report init "${plan[@]}" "card=${CARD:-unknown}" "driver=${DRIVER# }" "memory=${MEMTOTAL# }" \
  "torch=${TORCH_INFO% *}" "cuda=${TORCH_INFO##* }" "python=$PY" \
  "nvcc=$(nvcc --version 2>/dev/null | grep -o 'V[0-9.]*' | tail -1)" \
  "cmake=$(cmake --version | head -1 | awk '{print $3}')" "commit=$COMMIT" "host=$(hostname)" \
  "budget_s=$BUDGET" "build_dir=$BUILD" "jobs=$JOBS" "cuda_arch=sm_$ARCH" >/dev/null
echo "gpu_check: ${CARD:-?} (driver ${DRIVER# }), torch ${TORCH_INFO}, $(nproc) cores; results in $OUT_DIR; budget ${BUDGET}s"

# ---- torch.compile warm-up, overlapping the build ------------------------------------------------------
# Inductor and AOTAutograd cache their output on disk (/tmp/torchinductor_*): the measured compile
# run of stage 8 then mostly re-traces. Only its cache is kept; its figures are not used.
PEER=(bench/train/pytorch_seed_loop.py --device=cuda)
if [ "$PREWARM" = 1 ] && wanted peer_32x49_compile; then
  setsid timeout -k 5 300 "$PY" "${PEER[@]}" --batch_size=32 --seq_len=49 --compile=reduce-overhead \
    --fused_adam --steps=2 --warmup=3 >"$LOGS/peer_compile_prewarm.log" 2>&1 &
  PREWARM_PID=$!
fi

# ---- the missing Debian packages, unpacked into a private prefix ---------------------------------------
SYSROOT="${GPU_CHECK_SYSROOT:-/tmp/samout-gpu-sysroot}"
PKGCONF_ARGS=()
if compgen -G "$DEBS/*.deb" >/dev/null; then
  if unpack_sysroot "$SYSROOT"; then sysroot_env "$SYSROOT"; else SYSROOT=/nonexistent; fi
else
  echo "gpu_check: warning: no $DEBS/*.deb (run --prepare on the dev machine and copy .gpu-debs along);" \
       "using the system's gflags, glog, SentencePiece, nlohmann-json, xxHash"
  SYSROOT=/nonexistent
fi
# The sample corpus (for the GPU training tests' fixture): made from fortune packages this machine
# lacks, so --prepare brought a copy; then ctest must not try to remake it.
CTEST_FIXTURE=()
if [ ! -f /usr/share/games/fortunes/fortunes ]; then
  if [ ! -f data/sample/tokenizer.model ] && [ -f "$DEBS/sample/tokenizer.model" ]; then
    mkdir -p data/sample && cp -p "$DEBS"/sample/* "$DEBS"/sample/.inputs.sha256 data/sample/ 2>/dev/null
  fi
  if [ -f data/sample/tokenizer.model ]; then
    CTEST_FIXTURE=(-FS sample_corpus)
  else
    echo "gpu_check: warning: no fortune packages and no sample corpus (.gpu-debs/sample, from --prepare):" \
         "the GPU training tests will fail on their fixture"
  fi
fi

# ---- configure and build ---------------------------------------------------------------------------------
BUILT=0
if ! wanted configure; then
  [ -f "$BUILD/CMakeCache.txt" ] || echo "gpu_check: warning: --skip=configure but $BUILD is not configured"
elif ! configure_cmd "$BUILD" "$SYSROOT" "$PY" "$ARCH"; then
  report stage configure --title "$(title_of configure)" --status fail --note "$PY gave no torch CMake prefix"
elif run_stage configure "$LOGS/configure.log" "${CONFIGURE_CMD[@]}"; then
  report stage configure --title "$(title_of configure)" --status "$STATUS" --seconds "$SECS" \
    --log "$LOGS/configure.log" --summary "$(grep -E 'samout: CUDA' "$LOGS/configure.log" | tail -1 | sed 's/^-- //')"
fi
if ! wanted build; then
  BUILT=1
elif [ -f "$BUILD/CMakeCache.txt" ] && [ "${STATUS:-pass}" = pass ]; then
  keep_going=(-k)
  grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja' "$BUILD/CMakeCache.txt" && keep_going=(-k 0)
  # A failed build leaves the PyTorch peers to run: reserve only their floors.
  if RESERVE_PATTERN='peer_*' run_stage build "$LOGS/build.log" cmake --build "$BUILD" -j"$JOBS" -- "${keep_going[@]}"; then
    [ "$STATUS" = pass ] && BUILT=1
    note=()
    [ "$STATUS" = pass ] || note=(--note "$(grep -cE 'error:|Error [0-9]' "$LOGS/build.log") error lines in the log")
    report stage build --title "$(title_of build)" --status "$STATUS" --seconds "$SECS" \
      --log "$LOGS/build.log" --summary "make -j$JOBS, $(ls "$BUILD/bin" 2>/dev/null | wc -l) programs" "${note[@]}"
  fi
else
  skip_stage build "not configured"
fi
BIN="$BUILD/bin"
have() { [ -x "$BIN/$1" ]; }
need_build() { # need_build ID PROGRAM: false (and recorded) when the program is not built
  if ! have "$2"; then skip_stage "$1" "$2 not built"; return 1; fi
  [ "$BUILT" = 1 ] || echo "gpu_check: note: the build failed; $1 uses the $2 that exists"
  return 0
}

# ---- 1-4: correctness on the GPU ---------------------------------------------------------------------------
CTEST=(ctest --test-dir "$BUILD" --output-on-failure --no-tests=error "${CTEST_FIXTURE[@]}")
if wanted gpu_ctest && [ -f "$BUILD/CTestTestfile.cmake" ]; then
  run_stage gpu_ctest "$LOGS/gpu_ctest.log" "${CTEST[@]}" -j8 -L gpu \
      -E 'train\.gpu_sync_free|train\.gpu_mpi_two_ranks' &&
    report stage gpu_ctest --title "$(title_of gpu_ctest)" --status "$STATUS" --seconds "$SECS" \
      --log "$LOGS/gpu_ctest.log" --parse ctest
elif wanted gpu_ctest; then skip_stage gpu_ctest "not configured"; fi

if wanted memcheck && need_build memcheck cummax_gate_cuda_test; then
  SAN="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
         /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)"
  if [ -z "$SAN" ]; then
    skip_stage memcheck "compute-sanitizer not found"
  else
    # Without torch's caching allocator every tensor is its own cudaMalloc: an access past a tensor's
    # end is then past an allocation, which memcheck sees. CUDA API calls that return an error are
    # not counted (--report-api-errors no): libtorch probes the device with calls that may fail by
    # design, and the tests check our own launches (C10_CUDA_KERNEL_LAUNCH_CHECK) themselves.
    run_stage memcheck "$LOGS/memcheck.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        "$SAN" --tool memcheck --report-api-errors no --error-exitcode 1 "$BIN/cummax_gate_cuda_test" &&
      report stage memcheck --title "$(title_of memcheck)" --status "$STATUS" --seconds "$SECS" \
        --log "$LOGS/memcheck.log" --parse memcheck
  fi
fi

for id in sync_free mpi_two_ranks; do
  wanted "$id" || continue
  [ -f "$BUILD/CTestTestfile.cmake" ] || { skip_stage "$id" "not configured"; continue; }
  run_stage "$id" "$LOGS/$id.log" "${CTEST[@]}" -R "^train\.gpu_$id\$" &&
    report stage "$id" --title "$(title_of "$id")" --status "$STATUS" --seconds "$SECS" \
      --log "$LOGS/$id.log" --parse ctest
done

# ---- 5-8 measure: the torch.compile warm-up must not share the GPU with them ----------------------------
if [ -n "$PREWARM_PID" ]; then
  kill -0 "$PREWARM_PID" 2>/dev/null && echo "gpu_check: stopping the torch.compile warm-up (still running)"
  kill -- -"$PREWARM_PID" 2>/dev/null; wait "$PREWARM_PID" 2>/dev/null; PREWARM_PID=""
fi

# ---- 5: samout training tokens/s, the seed model -----------------------------------------------------
# configs/seed.flags (V=8460, d=512, L=8, h=8, Adam 1e-3), random tokens; tokens/s is the median of
# the logged windows after the first two (warm-up).
train_run() { # ID B T PRECISION STEPS LOG_EVERY
  local id="$1" b="$2" t="$3" prec="$4" steps="$5" every="$6" m="$LOGS/$1.jsonl"
  wanted "$id" || return 0
  need_build "$id" samout_ddp || return 0
  rm -f "$m"
  sampler_start "$LOGS/$id.mem"
  run_stage "$id" "$LOGS/$id.log" "$BIN/samout_ddp" --flagfile=configs/seed.flags --device=cuda \
      --data=random:1 --vocab_size=8460 --batch_size="$b" --seq_len="$t" --precision="$prec" \
      --steps="$steps" --log_every="$every" --eval_every=0 --metrics_file="$m" --ckpt_dir= 
  local ran=$?
  sampler_stop
  [ $ran = 0 ] && report stage "$id" --title "$(title_of "$id")" --status "$STATUS" --seconds "$SECS" \
    --log "$LOGS/$id.log" --parse metrics --input "$m" --mem_samples "$LOGS/$id.mem" \
    --set kind=samout_train --set batch_size="$b" --set seq_len="$t" --set precision="$prec"
}
train_run train_32x1024_bf16 32 1024 bf16 40 5
train_run train_32x49_fp32 32 49 fp32 120 10
train_run train_4x8192_bf16 4 8192 bf16 30 5

# ---- 6: batch-1 decode with CUDA graphs ---------------------------------------------------------------
if wanted decode && need_build decode bench_generate; then
  run_stage decode "$LOGS/decode.log" "$BIN/bench_generate" --device=cuda --cuda_graph &&
    report stage decode --title "$(title_of decode)" --status "$STATUS" --seconds "$SECS" \
      --log "$LOGS/decode.log" --parse generate --set kind=samout_decode
fi

# ---- 7: the op benchmark ------------------------------------------------------------------------------
if wanted opbench && need_build opbench bench_cummax_gate; then
  rm -f "$OUT_DIR/opbench.json"
  run_stage opbench "$LOGS/opbench.log" "$BIN/bench_cummax_gate" --device=cuda --json="$OUT_DIR/opbench.json" &&
    report stage opbench --title "$(title_of opbench)" --status "$STATUS" --seconds "$SECS" \
      --log "$LOGS/opbench.log" --parse opbench --input "$OUT_DIR/opbench.json" --set kind=samout_op
fi

# ---- 8: the PyTorch peers on the same GPU -----------------------------------------------------------
peer_run() { # ID B T ARGS...
  local id="$1" b="$2" t="$3"; shift 3
  wanted "$id" || return 0
  sampler_start "$LOGS/$id.mem"
  run_stage "$id" "$LOGS/$id.log" "$PY" "${PEER[@]}" --batch_size="$b" --seq_len="$t" "$@"
  local ran=$?
  sampler_stop
  [ $ran = 0 ] && report stage "$id" --title "$(title_of "$id")" --status "$STATUS" --seconds "$SECS" \
    --log "$LOGS/$id.log" --parse pytorch --mem_samples "$LOGS/$id.mem" --set kind=pytorch_train
}
peer_run peer_32x1024_fp32 32 1024 --precision=fp32 --steps=15 --warmup=3
peer_run peer_32x1024_bf16 32 1024 --precision=bf16 --fused_adam --steps=20 --warmup=3
peer_run peer_32x49_fp32 32 49 --precision=fp32 --steps=60 --warmup=5 --decode_tokens=200
peer_run peer_32x49_compile 32 49 --precision=fp32 --compile=reduce-overhead --fused_adam --steps=100 --warmup=5
peer_run peer_4x8192_bf16 4 8192 --precision=bf16 --fused_adam --steps=15 --warmup=3

# ---- the end ---------------------------------------------------------------------------------------------
WALL=$(( $(date +%s) - T_START ))
report meta "wall_s=$WALL"
echo
echo "gpu_check: done in $((WALL / 60)) min $((WALL % 60)) s; $OUT_DIR/results.md:"
echo
report render --print
report verdict   # "every stage passed", or which did not (exit 1)
exit $?
