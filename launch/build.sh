#!/usr/bin/env bash
# Configures and builds samout into build/ (programs in build/bin/). Runs setup.sh first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/launch/setup.sh"
VENV="${SAMOUT_VENV:-$ROOT/.venv}"
BUILD="${SAMOUT_BUILD:-$ROOT/build}"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSAMOUT_PYTHON="$VENV/bin/python" \
    ${SAMOUT_CMAKE_ARGS:-} >/dev/null
fi
cmake --build "$BUILD" -j"$(nproc)"
