#!/usr/bin/env bash
# gpu_check.sh: the one script a person with a single NVIDIA GPU runs to check samout there.
#
#   bash launch/gpu_check.sh --prepare      on the dev machine (Debian 12, no GPU needed): gathers the
#                                           Debian packages the GPU machine lacks (and ninja), and the
#                                           sample corpus, into .gpu-debs/ (git-ignored; < 64 MiB),
#                                           then checks the configure step against them unpacked
#   bash launch/gpu_check.sh --dry_run      anywhere: prints the plan (stages in order, the time cap
#                                           of each, their sum, the targets built) and exits 0,
#                                           running and writing nothing
#   bash launch/gpu_check.sh [--out=DIR]    on the GPU machine, from the repository root, with
#                                           .gpu-debs/ copied along: builds, benchmarks, tests
#
# It fits in 6 minutes (--budget, default 360 s: the sum of the stages' caps, see --dry_run) on
# one H200 with 16 cores, so that a rerun of what failed fits in the same lease. On the GPU machine
# it unpacks .gpu-debs/*.deb into a private prefix (never into /), configures (Ninja when there is
# one) and builds only the targets the stages use, with every core (Release, the card's
# architecture), then runs each stage under its own timeout, measuring samout first and checking
# correctness after:
#   1. samout_ddp tokens/s, seed model: B=32 T=1024 bf16, B=32 T=49 fp32, B=4 T=8192 bf16
#   2. batch-1 decode tokens/s, CUDA graphs        5. ctest -L gpu (without 7 and 8)
#   3. bench_cummax_gate on CUDA                    6. compute-sanitizer memcheck, a few op cases
#   4. the strongest PyTorch peers on the same GPU  7. the sync-debug training test
#      (eager bf16 + fused Adam; torch.compile      8. 2 ranks --comm=mpi on one GPU vs 1 rank
#      with CUDA graphs at B=32 T=49; eager stateful decode)
# A failed or timed-out configure or build stops the run with one line (exit 1); any later stage
# that fails does not stop the others. Nothing else uses the GPU or the cores during the build.
# After every stage it rewrites <out>/results.md (the table: status, figures, samout over the
# strongest PyTorch variant at the same shape) and <out>/results.json (every figure), so a run cut
# short keeps what it measured; each stage's log is in <out>/logs/. Default <out>: $OUT when set
# (the device runner's folder), else runs/gpu_check-<date>.
#
# Rerun: the build folder keeps the last run's results and logs (<build>/gpu_check/). Run again with
# the same --build (the default build-gpu is kept between calls on a warm machine) and the stages
# that passed on the same sources are not run again: configure is skipped, the build is
# incremental (a no-op when nothing changed), and the earlier figures appear in the new table,
# marked with their run's date. A stage that timed out gets twice its cap. Changed sources or
# --force run every stage again; --only=ID,... runs those again.
#
# Options: --out=DIR  --build=DIR (default build-gpu)  --budget=SECONDS  --jobs=N (default: every
#          core)  --python=PATH (the python with torch; default: the first of python3,
#          /opt/torch/.venv/bin/python3, .venv/bin/python that imports torch)
#          --only=ID,... / --skip=ID,... (stage ids or groups, see STAGES below: e.g. --only=peers)
#          --cap=ID:SECONDS (another timeout for one stage; repeatable)  --force (ignore the rerun
#          state)  --dry_run  --prepare [--no_verify] [--verify_build=DIR (default /tmp/gpucheck-build)]
# Exit status: 0 when every stage passed (now or, on a rerun, before); 1 when one failed, timed out
# or was skipped; 2 when it could not start: no GPU (one line), bad arguments. For its tests
# (tests/launch/): GPU_CHECK_ASSUME_GPU=1 skips the GPU probe, GPU_CHECK_SYSROOT moves the private
# prefix, GPU_CHECK_SOURCES names the tree whose files make the rerun's source stamp.
set -u

T_START=$(printf '%(%s)T' -1)   # the budget counts from here: the GPU probe and set-up included
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEBS="$ROOT/.gpu-debs"
REPORT="$ROOT/launch/gpu_check_report.py"
# What the build needs (CMakeLists.txt, src/*/CMakeLists.txt) that the GPU machine (Ubuntu 24.04)
# lacks: gflags, glog (+ libunwind), SentencePiece, nlohmann-json, xxHash; pkgconf, used only where
# the machine has no pkg-config; ninja, used only where it has none (Ninja compiles a library's
# dependents while it links; Makefiles wait). Debian 12's need glibc 2.36; Ubuntu 24.04 has 2.39.
DEB_PACKAGES=(libgflags-dev libgflags2.2 libgoogle-glog-dev libgoogle-glog0v6 libunwind8
  libunwind-dev libsentencepiece-dev libsentencepiece0 nlohmann-json3-dev libxxhash-dev libxxhash0
  pkgconf-bin libpkgconf3 ninja-build)
DEBS_LIMIT_MB=64
MULTIARCH=x86_64-linux-gnu

MODE=check OUT_DIR="" BUILD="$ROOT/build-gpu" BUDGET=360 JOBS="" PY="" ONLY="" SKIP=""
VERIFY=1 VERIFY_BUILD=/tmp/gpucheck-build CAPS="," FORCE=0
usage() { sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
for arg in "$@"; do
  case "$arg" in
    --prepare) MODE=prepare ;;
    --dry_run|--dry-run) MODE=dry_run ;;
    --no_verify|--no-verify) VERIFY=0 ;;
    --verify_build=*) VERIFY_BUILD="${arg#*=}" ;;
    --out=*) OUT_DIR="${arg#*=}" ;;
    --build=*) BUILD="${arg#*=}" ;;
    --budget=*) BUDGET="${arg#*=}" ;;
    --jobs=*) JOBS="${arg#*=}" ;;
    --python=*) PY="${arg#*=}" ;;
    --only=*) ONLY=",${arg#*=}," ;;
    --skip=*) SKIP=",${arg#*=}," ;;
    --force) FORCE=1 ;;
    --cap=*:*) CAPS="$CAPS${arg#*=}," ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check: --budget must be whole seconds" >&2; exit 2 ;; esac
[ -n "$JOBS" ] || JOBS="$(nproc)"
case "$BUILD" in /*) ;; *) BUILD="$PWD/$BUILD" ;; esac
STATE="$BUILD/gpu_check"   # the rerun state: the last run's results.json and logs

# ---- helpers shared by every mode -----------------------------------------------------------------

# probe_torch PYTHON: torch's facts from one interpreter start (an import of torch costs seconds).
probe_torch() {
  timeout 120 "$1" -c 'import torch
print("torch", torch.__version__, torch.version.cuda)
print("prefix", torch.utils.cmake_prefix_path)
ok = torch.cuda.is_available()
print("cuda_available", int(ok))
print("device", torch.cuda.get_device_name(0) if ok else "none")' 2>/dev/null
}
probe_value() { sed -n "s/^$1 //p" <<< "$PROBE" | head -1; }

# The first python3 that imports torch: --python, $SAMOUT_PYTHON, python3 on PATH, the GPU
# machine's /opt/torch/.venv, the project's .venv. Sets FOUND_PY and PROBE (probe_torch's lines).
find_python() {
  local c
  for c in "$PY" "${SAMOUT_PYTHON:-}" "$(command -v python3 2>/dev/null)" /opt/torch/.venv/bin/python3 \
           "$ROOT/.venv/bin/python"; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    PROBE="$(probe_torch "$c")"
    if [ -n "$(probe_value prefix)" ]; then FOUND_PY="$c"; return 0; fi
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

# ninja_for SYSROOT: the machine's ninja, else the one from .gpu-debs; nothing when neither.
ninja_for() {
  command -v ninja 2>/dev/null && return 0
  [ -x "$1/usr/bin/ninja" ] && echo "$1/usr/bin/ninja"
  return 0
}

# configure_cmd BUILD SYSROOT PYTHON [ARCH]: sets CONFIGURE_CMD, the one configure command of both
# modes. Needs PROBE from find_python for PYTHON.
configure_cmd() {
  local build="$1" sys="$2" py="$3" arch="${4:-90}" tp ninja gen=()
  tp="$(probe_value prefix)"
  [ -n "$tp" ] || return 1
  ninja="$(ninja_for "$sys")"
  # The generator is fixed at the first configure of a folder.
  if [ ! -f "$build/CMakeCache.txt" ] && [ -n "$ninja" ]; then gen=(-G Ninja -DCMAKE_MAKE_PROGRAM="$ninja"); fi
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
    find_python || { echo "gpu_check --prepare: no python with torch here: configure not checked" >&2; exit 0; }
    vpy="$FOUND_PY"
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

# ---- the plan ---------------------------------------------------------------------------------------
# The card's architecture for nvcc (9.0 -> 90; H100 and H200 are sm_90).
detect_arch() {
  ARCH="${GPU_CHECK_CUDA_ARCH:-}"
  if [ -z "$ARCH" ] && command -v nvidia-smi >/dev/null 2>&1; then
    ARCH="$(timeout 30 nvidia-smi --query-gpu=compute_cap --format=csv,noheader -i 0 2>/dev/null | tr -d ' .')"
  fi
  case "$ARCH" in ''|*[!0-9]*) ARCH=90 ;; esac
}

# Stages, in the order they run: id|title|cap seconds|floor seconds|targets it needs built. A stage's
# timeout is its cap, cut so that every later stage can still have its floor; a stage left less
# than its floor is skipped. The caps and SETUP_S sum to the default budget, 360 s.
SETUP_S=10   # GPU probe, machine facts, .gpu-debs unpacked: before the first stage
define_stages() {
  STAGES=(
    "configure|configure (cmake, Release, sm_$ARCH)|30|15|"
    "build|build (the stages' targets only)|90|45|"
    "train_32x1024_bf16|1 samout train B=32 T=1024 bf16|15|8|samout_ddp"
    "train_32x49_fp32|1 samout train B=32 T=49 fp32|12|6|samout_ddp"
    "train_4x8192_bf16|1 samout train B=4 T=8192 bf16|15|8|samout_ddp"
    "decode|2 samout decode batch 1, CUDA graph|12|6|bench_generate"
    "opbench|3 bench_cummax_gate (CUDA)|15|8|bench_cummax_gate"
    "peer_32x1024_bf16|4 PyTorch B=32 T=1024 bf16 eager, fused Adam|15|8|"
    "peer_32x49_compile|4 PyTorch B=32 T=49 fp32 torch.compile reduce-overhead, fused Adam|40|20|"
    "peer_4x8192_bf16|4 PyTorch B=4 T=8192 bf16 eager, fused Adam; eager stateful decode|18|10|"
    "gpu_ctest|5 ctest -L gpu (without 7 and 8)|35|20|samout_ops cummax_gate_cuda_test generate_cuda_test samout_ddp samout_prep"
    "memcheck|6 compute-sanitizer memcheck, cummax_gate CUDA cases|20|10|cummax_gate_cuda_test"
    "sync_free|7 training under sync-debug=error|12|8|samout_ddp"
    "mpi_two_ranks|8 2 ranks --comm=mpi on 1 GPU vs 1 rank|21|10|samout_ddp"
  )
}
# The op cases memcheck runs: ties and the carried state, and forward and backward in every dtype
# (each its own translation unit) on a strided input with NaN and partial blocks (B*d = 134) and
# on several blocks (B*d = 1200).
MEMCHECK_FILTER='CummaxGateCuda.TiesSendGradientToTheLatestPosition:CummaxGateCuda.StateCarriesTheRunningMax'
MEMCHECK_FILTER+=':Sizes/CummaxGateCudaVsCpu.*/B2_T33_d67_state_strided_nan_*:Sizes/CummaxGateCudaVsCpu.*/B4_T50_d300_state_*'

field() { local IFS='|' parts; read -r -a parts <<< "$1"; echo "${parts[$(($2 - 1))]:-}"; }
stage_line() { local s; for s in "${STAGES[@]}"; do [ "${s%%|*}" = "$1" ] && { echo "$s"; return; }; done; }
title_of() { field "$(stage_line "$1")" 2; }

# --only/--skip take ids or their groups (the id up to its first '_'): train, peer(s), gpu, ...
in_list() { [[ "$1" == *",$2,"* || "$1" == *",${2%%_*},"* || "$1" == *",${2%%_*}s,"* ]]; }
# The earlier run's status of each stage (rerun), when it ran on the same sources.
declare -A PRIOR=()
PRIOR_STATE=none PRIOR_DATE=""
load_prior() {
  local lines id st
  [ "$FORCE" = 1 ] || [ ! -f "$STATE/results.json" ] || [ -z "$RPY" ] && return 0
  if lines="$("$RPY" "$REPORT" --out "$STATE" prior --sources "$STAMP" 2>/dev/null)"; then
    PRIOR_STATE=same
    while read -r id st; do [ -n "$id" ] && PRIOR[$id]=$st; done <<< "$lines"
    PRIOR_DATE="$("$RPY" -c 'import json,sys;print(json.load(open(sys.argv[1]))["meta"].get("date",""))' \
      "$STATE/results.json" 2>/dev/null)"
  else
    PRIOR_STATE=changed
  fi
}
# Everything the tests and benchmarks read, and the architecture: another stamp, another run.
source_stamp() {
  (cd "${GPU_CHECK_SOURCES:-$ROOT}" && { echo "sm_$ARCH"; find CMakeLists.txt cmake src include tests bench configs -type f \
    ! -name '*.pyc' -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16)
}
# carried ID: passed in the earlier run and not asked for again. The build is never carried while
# a stage needs a target: it runs, incrementally (a no-op when nothing changed).
carried() {
  [ "${PRIOR[$1]:-}" = pass ] || return 1
  [ -n "$ONLY" ] && in_list "$ONLY" "$1" && return 1
  case "$1" in
    build) [ -z "$TARGETS" ] ;;
    configure) [ -f "$BUILD/CMakeCache.txt" ] ;;
    *) return 0 ;;
  esac
}
# selected ID: chosen by --only/--skip; configure and build come with any stage that needs a target.
selected() {
  local id="$1"
  if [ -n "$ONLY" ] && ! in_list "$ONLY" "$id"; then
    case "$id" in configure|build) ;; *) return 1 ;; esac
  fi
  [ -n "$SKIP" ] && in_list "$SKIP" "$id" && return 1
  case "$id" in
    configure|build) [ -n "$TARGETS" ] || carried "$id" || { [ -n "$ONLY" ] && in_list "$ONLY" "$id"; } ;;
  esac
}
wanted() { selected "$1" && ! carried "$1"; }
# The targets of the stages that will run (with "all": of every stage), each once, in stage order.
needed_targets() {
  local s id t out=" "
  for s in "${STAGES[@]}"; do
    id="${s%%|*}"
    case "$id" in configure|build) continue ;; esac
    [ "${1:-}" = all ] || wanted "$id" || continue
    for t in $(field "$s" 5); do [[ "$out" == *" $t "* ]] || out="$out$t "; done
  done
  out="${out# }"; echo "${out% }"
}
# The cap: --cap, else the table's, twice that for a stage that timed out in the earlier run.
cap_of() {
  local c
  if [[ "$CAPS" == *",$1:"* ]]; then c="${CAPS#*,"$1":}"; echo "${c%%,*}"; return; fi
  c="$(field "$(stage_line "$1")" 3)"
  [ "${PRIOR[$1]:-}" = timeout ] && c=$((2 * c))
  echo "$c"
}
floor_of() { local f c; f="$(field "$(stage_line "$1")" 4)"; c="$(cap_of "$1")"; echo $((c < f ? c : f)); }

# Reads the rerun state and settles what runs: PRIOR, TARGETS.
settle_plan() {
  define_stages
  STAMP="$(source_stamp)"
  load_prior
  TARGETS=""
  TARGETS="$(needed_targets)"
  # --only=build alone: every stage's targets.
  [ -n "$TARGETS" ] || ! wanted build || TARGETS="$(needed_targets all)"
}

print_plan() {
  local s id cap total=$SETUP_S gen
  gen="Unix Makefiles (no ninja)"
  if [ -f "$BUILD/CMakeCache.txt" ]; then
    gen="$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$BUILD/CMakeCache.txt") (configured already)"
  elif command -v ninja >/dev/null 2>&1; then gen="Ninja ($(command -v ninja))"
  elif compgen -G "$DEBS/ninja-build_*.deb" >/dev/null; then gen="Ninja (from .gpu-debs)"
  fi
  echo "gpu_check plan (--dry_run: nothing run, nothing written)"
  echo "  build folder: $BUILD; generator: $gen; sm_$ARCH"
  case "$PRIOR_STATE" in
    same) echo "  rerun: the earlier run there (${PRIOR_DATE:-?}) ran on these sources: what passed is not run again" ;;
    changed) echo "  rerun: the earlier run there ran on other sources: every stage runs again" ;;
  esac
  printf '  %-20s %6s  %s\n' stage cap what
  printf '  %-20s %4d s  %s\n' setup "$SETUP_S" "GPU probe, machine facts, .gpu-debs unpacked"
  for s in "${STAGES[@]}"; do
    id="${s%%|*}"
    selected "$id" || continue
    if carried "$id"; then
      printf '  %-20s %6s  %s\n' "$id" carried "$(field "$s" 2) (passed in the earlier run)"
      continue
    fi
    cap="$(cap_of "$id")"
    total=$((total + cap))
    printf '  %-20s %4d s  %s\n' "$id" "$cap" "$(field "$s" 2)"
  done
  echo "  targets: ${TARGETS:-(none)}"
  [ -n "$TARGETS" ] && echo "  build: cmake --build $BUILD -j<every core> --target $TARGETS"
  echo "  total $total s (budget $BUDGET s)$([ "$total" -gt "$BUDGET" ] && echo ": OVER, later stages will be cut")"
}

if [ "$MODE" = dry_run ]; then
  RPY="$(command -v python3 2>/dev/null)"
  detect_arch
  settle_plan
  print_plan
  exit 0
fi

# ---- on the GPU machine: is there a GPU? -----------------------------------------------------------------
no_gpu() {
  echo "gpu_check: no NVIDIA GPU on this machine ($1); run it on a GPU machine, or use --prepare here" >&2
  exit 2
}
PROBE=""
if [ "${GPU_CHECK_ASSUME_GPU:-0}" = 1 ]; then
  find_python || { echo "gpu_check: no python3 with torch (--python=)" >&2; exit 2; }
  PY="$FOUND_PY"
else
  command -v nvidia-smi >/dev/null 2>&1 || no_gpu "nvidia-smi not found"
  GPU_LINES="$(timeout 60 nvidia-smi -L 2>/dev/null | grep -E '^GPU [0-9]+:')"
  [ -n "$GPU_LINES" ] || no_gpu "nvidia-smi found none"
  find_python || no_gpu "no python3 with torch to check CUDA from; give one with --python="
  PY="$FOUND_PY"
  [ "$(probe_value cuda_available)" = 1 ] ||
    no_gpu "nvidia-smi lists one but torch.cuda.is_available() is False in $PY"
fi

# ---- set-up ---------------------------------------------------------------------------------------------
now() { printf '%(%s)T' -1; }
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
detect_arch
settle_plan

report() { "$RPY" "$REPORT" --out "$OUT_DIR" --state "$STATE" "$@"; }

# timeout_for ID: seconds stage ID may take now (its cap, less the floors of the stages after it).
timeout_for() {
  local id="$1" after=0 reserve=0 s sid cap now left
  for s in "${STAGES[@]}"; do
    sid="${s%%|*}"
    if [ "$after" = 1 ] && wanted "$sid"; then reserve=$((reserve + $(floor_of "$sid"))); fi
    [ "$sid" = "$id" ] && { after=1; cap="$(cap_of "$id")"; }
  done
  now=$(now)
  left=$((DEADLINE - now - reserve))
  [ "$left" -lt "$cap" ] && cap=$left
  echo "$cap"
}

# run_stage ID LOG CMD...: runs CMD under its timeout, output into LOG. Sets STATUS and SECS.
# Returns 1 (and records the stage as skipped) when it does not fit in the time left.
run_stage() {
  local id="$1" log="$2" t rc t0; shift 2
  t="$(timeout_for "$id")"
  STATUS=skipped SECS=0
  if [ "$t" -lt "$(floor_of "$id")" ]; then
    report stage "$id" --title "$(title_of "$id")" --status skipped --note "out of time (${t}s left for it)"
    return 1
  fi
  echo "gpu_check: -- $(title_of "$id") (timeout ${t}s; log ${log#"$OUT_DIR"/})"
  t0=$(now)
  timeout -k 5 "$t" "$@" >"$log" 2>&1
  rc=$?
  SECS=$(( $(now) - t0 ))
  case $rc in
    0) STATUS=pass ;;
    124|137) STATUS=timeout ;;
    *) STATUS=fail ;;
  esac
  # configure and build say why in the one line that stops the run (stop_run).
  if [ "$STATUS" != pass ] && [ "$id" != configure ] && [ "$id" != build ]; then
    echo "gpu_check:    exit $rc after ${SECS}s; last lines of the log:"
    tail -n 15 "$log" | sed 's/^/    | /'
  fi
  return 0
}
skip_stage() { report stage "$1" --title "$(title_of "$1")" --status skipped --note "$2"; }

# stop_run ID: a configure or build that did not pass ends the run, with one line (results.md,
# rewritten by its report, says the same); nothing after it would have what it needs.
stop_run() {
  local id="$1" why first
  case "$STATUS" in
    timeout) why="timed out after ${SECS} s" ;;
    skipped) why="did not fit in the time left" ;;
    *) why="failed after ${SECS} s" ;;
  esac
  first="$(grep -m1 -E 'error:|CMake Error|undefined reference' "$LOGS/$id.log" 2>/dev/null |
           sed "s#$ROOT/##g" | cut -c1-160)"
  report meta "wall_s=$(( $(now) - T_START ))" >/dev/null
  echo "gpu_check: $id $why (see logs/$id.log${first:+; first error: $first}); stopping"
  exit 1
}

# nvidia-smi's memory.used every 200 ms while a run lasts (MiB, one a line).
SAMPLER=""
sampler_start() {
  : > "$1"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 200 >>"$1" 2>/dev/null &
  SAMPLER=$!
}
sampler_stop() { [ -n "$SAMPLER" ] && { kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; }; SAMPLER=""; }
trap sampler_stop EXIT
trap 'echo "gpu_check: interrupted"; exit 130' INT TERM

# ---- machine facts -----------------------------------------------------------------------------------
{
  echo "## nvidia-smi"; timeout 30 nvidia-smi
  echo "## torch ($PY)"; echo "$PROBE"
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
TORCH_INFO="$(probe_value torch)"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
if [ -n "$COMMIT" ]; then
  [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | head -1)" ] && COMMIT="$COMMIT (with uncommitted changes)"
else
  COMMIT="unknown (no .git); prepared at: $(head -1 "$DEBS/MANIFEST.txt" 2>/dev/null | sed 's/.*commit //')"
fi
plan=() carry=() carried_ids=()
for s in "${STAGES[@]}"; do
  id="${s%%|*}"
  selected "$id" || continue
  plan+=(--plan "$id=$(field "$s" 2)")
  carried "$id" && { carry+=(--carry "$id"); carried_ids+=("$id"); }
done
[ ${#carry[@]} -gt 0 ] && carry+=(--carry_from "$STATE/results.json")
report init "${plan[@]}" "${carry[@]}" "card=${CARD:-unknown}" "driver=${DRIVER# }" "memory=${MEMTOTAL# }" \
  "torch=${TORCH_INFO% *}" "cuda=${TORCH_INFO##* }" "python=$PY" \
  "nvcc=$(nvcc --version 2>/dev/null | grep -o 'V[0-9.]*' | tail -1)" \
  "cmake=$(cmake --version | head -1 | awk '{print $3}')" "commit=$COMMIT" "host=$(hostname)" \
  "budget_s=$BUDGET" "build_dir=$BUILD" "jobs=$JOBS" "cuda_arch=sm_$ARCH" "sources=$STAMP" \
  "targets=${TARGETS:-none}" ${PRIOR_DATE:+"rerun_of=$PRIOR_DATE"} >/dev/null || exit 2
echo "gpu_check: ${CARD:-?} (driver ${DRIVER# }), torch ${TORCH_INFO}, $(nproc) cores; results in $OUT_DIR; budget ${BUDGET}s"
case "$PRIOR_STATE" in
  same) [ ${#carried_ids[@]} -gt 0 ] && echo "gpu_check: rerun in $BUILD: passed on $PRIOR_DATE," \
          "not run again (--force runs them): ${carried_ids[*]}" ;;
  changed) echo "gpu_check: the sources changed since the run kept in $BUILD: every stage runs again" ;;
esac

# ---- the missing Debian packages, unpacked into a private prefix ---------------------------------------
# Also on a rerun: the programs load gflags, glog and SentencePiece from it.
SYSROOT="${GPU_CHECK_SYSROOT:-/tmp/samout-gpu-sysroot}"
PKGCONF_ARGS=()
if compgen -G "$DEBS/*.deb" >/dev/null; then
  if unpack_sysroot "$SYSROOT"; then sysroot_env "$SYSROOT"; else SYSROOT=/nonexistent; fi
else
  echo "gpu_check: warning: no $DEBS/*.deb (run --prepare on the dev machine and copy .gpu-debs along);" \
       "using the system's gflags, glog, SentencePiece, nlohmann-json, xxHash"
  SYSROOT=/nonexistent
fi
# The sample corpus (for the training tests' fixture): made from fortune packages this machine
# lacks, so --prepare brought a copy; then ctest must not try to remake it.
CTEST_FIXTURE=()
if [ ! -f /usr/share/games/fortunes/fortunes ]; then
  if [ ! -f data/sample/tokenizer.model ] && [ -f "$DEBS/sample/tokenizer.model" ]; then
    mkdir -p data/sample && cp -p "$DEBS"/sample/* "$DEBS"/sample/.inputs.sha256 data/sample/ 2>/dev/null
  fi
  [ -f data/sample/tokenizer.model ] && CTEST_FIXTURE=(-FS sample_corpus)
fi

# ---- configure and build: only the targets the stages use; a failure stops the run -------------------
if wanted configure; then
  if ! configure_cmd "$BUILD" "$SYSROOT" "$PY" "$ARCH"; then
    STATUS=fail SECS=0
    echo "$PY gave no torch CMake prefix" > "$LOGS/configure.log"
    report stage configure --title "$(title_of configure)" --status fail --log "$LOGS/configure.log" \
      --note "$PY gave no torch CMake prefix" >/dev/null
    stop_run configure
  fi
  run_stage configure "$LOGS/configure.log" "${CONFIGURE_CMD[@]}" || stop_run configure
  line="$(report stage configure --title "$(title_of configure)" --status "$STATUS" --seconds "$SECS" \
    --log "$LOGS/configure.log" --summary "$(grep -E 'samout: CUDA' "$LOGS/configure.log" | tail -1 | sed 's/^-- //')")"
  [ "$STATUS" = pass ] || stop_run configure
  echo "$line"
elif ! selected configure && [ -n "$TARGETS" ] && [ ! -f "$BUILD/CMakeCache.txt" ]; then
  echo "gpu_check: warning: --skip=configure but $BUILD is not configured"
fi
if wanted build; then
  keep_going=(-k)   # every error in one log, and a rerun has less left to compile
  grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja' "$BUILD/CMakeCache.txt" 2>/dev/null && keep_going=(-k 0)
  # shellcheck disable=SC2086  # TARGETS is a list of names
  run_stage build "$LOGS/build.log" cmake --build "$BUILD" -j"$JOBS" --target $TARGETS -- "${keep_going[@]}" ||
    stop_run build
  note=()
  [ "$STATUS" = pass ] || note=(--note "$(grep -cE 'error:|Error [0-9]' "$LOGS/build.log") error lines in the log")
  line="$(report stage build --title "$(title_of build)" --status "$STATUS" --seconds "$SECS" \
    --log "$LOGS/build.log" --summary "-j$JOBS: $TARGETS" "${note[@]}")"
  [ "$STATUS" = pass ] || stop_run build
  echo "$line"
fi
BIN="$BUILD/bin"
have() { [ -x "$BIN/$1" ]; }
need_build() { # need_build ID PROGRAM: false (and recorded) when the program is not built
  if ! have "$2"; then skip_stage "$1" "$2 not built"; return 1; fi
  return 0
}

# ---- 1: samout training tokens/s, the seed model -----------------------------------------------------
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
train_run train_32x1024_bf16 32 1024 bf16 30 5
train_run train_32x49_fp32 32 49 fp32 120 10
train_run train_4x8192_bf16 4 8192 bf16 25 5

# ---- 2: batch-1 decode with CUDA graphs ---------------------------------------------------------------
if wanted decode && need_build decode bench_generate; then
  run_stage decode "$LOGS/decode.log" "$BIN/bench_generate" --device=cuda --cuda_graph &&
    report stage decode --title "$(title_of decode)" --status "$STATUS" --seconds "$SECS" \
      --log "$LOGS/decode.log" --parse generate --set kind=samout_decode
fi

# ---- 3: the op benchmark ------------------------------------------------------------------------------
if wanted opbench && need_build opbench bench_cummax_gate; then
  rm -f "$OUT_DIR/opbench.json"
  run_stage opbench "$LOGS/opbench.log" "$BIN/bench_cummax_gate" --device=cuda --json="$OUT_DIR/opbench.json" &&
    report stage opbench --title "$(title_of opbench)" --status "$STATUS" --seconds "$SECS" \
      --log "$LOGS/opbench.log" --parse opbench --input "$OUT_DIR/opbench.json" --set kind=samout_op
fi

# ---- 4: the strongest PyTorch peers on the same GPU -------------------------------------------------
# (eager fp32 is beaten by eager bf16 at T=1024 and by the compiled loop at T=49: not run.)
PEER=(bench/train/pytorch_seed_loop.py --device=cuda)
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
peer_run peer_32x1024_bf16 32 1024 --precision=bf16 --fused_adam --steps=15 --warmup=3
peer_run peer_32x49_compile 32 49 --precision=fp32 --compile=reduce-overhead --fused_adam --steps=100 --warmup=5
peer_run peer_4x8192_bf16 4 8192 --precision=bf16 --fused_adam --steps=10 --warmup=3 --decode_tokens=200

# ---- 5-8: correctness on the GPU ---------------------------------------------------------------------------
CTEST=(ctest --test-dir "$BUILD" --output-on-failure --no-tests=error "${CTEST_FIXTURE[@]}")
if wanted gpu_ctest && [ -f "$BUILD/CTestTestfile.cmake" ]; then
  # Only tests whose programs were built: one naming a missing file under the build is left out.
  unbuilt="$(ctest --test-dir "$BUILD" -L gpu --show-only=json-v1 2>/dev/null > "$LOGS/gpu_tests.json" &&
             "$RPY" "$REPORT" --out "$OUT_DIR" unbuilt --build "$BUILD" --tests "$LOGS/gpu_tests.json")"
  exclude='^train\.gpu_(sync_free|mpi_two_ranks)$'
  note=()
  if [ -n "$unbuilt" ]; then
    exclude="$exclude|^($(sed 's/[][().*+?^$|\\]/\\&/g' <<< "$unbuilt" | paste -sd'|'))\$"
    note=(--note "not built, not run: $(paste -sd' ' <<< "$unbuilt")")
  fi
  # The JUnit file keeps each test's output: a test that skips for want of a second GPU is told
  # from one that skips for want of CUDA.
  run_stage gpu_ctest "$LOGS/gpu_ctest.log" "${CTEST[@]}" -j"$JOBS" -L gpu -E "$exclude" \
      --output-junit "$LOGS/gpu_ctest.xml" &&
    report stage gpu_ctest --title "$(title_of gpu_ctest)" --status "$STATUS" --seconds "$SECS" \
      --log "$LOGS/gpu_ctest.log" --parse ctest --junit "$LOGS/gpu_ctest.xml" "${note[@]}"
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
        "$SAN" --tool memcheck --report-api-errors no --error-exitcode 1 "$BIN/cummax_gate_cuda_test" \
        --gtest_filter="$MEMCHECK_FILTER" &&
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

# ---- the end ---------------------------------------------------------------------------------------------
WALL=$(( $(now) - T_START ))
report meta "wall_s=$WALL"
echo
echo "gpu_check: done in $((WALL / 60)) min $((WALL % 60)) s; $OUT_DIR/results.md:"
echo
report render --print
report verdict   # "every stage passed", or which did not (exit 1)
exit $?
