#!/usr/bin/env bash
# The README's test command: sets up, builds, and runs every test (ctest).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/launch/build.sh"
BUILD="${SAMOUT_BUILD:-$ROOT/build}"
cd "$BUILD"
ctest --output-on-failure -j"$(nproc)" "$@"
