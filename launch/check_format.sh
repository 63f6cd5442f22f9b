#!/usr/bin/env bash
# The layout check run by ctest (launch.format): every tracked C++/CUDA file must be as clang-format
# (.clang-format at the root) leaves it. `launch/check_format.sh --fix` rewrites them instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
command -v clang-format >/dev/null || { echo "check_format: clang-format not found (launch/setup.sh installs it)"; exit 2; }
mapfile -t files < <(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh' | while read -r f; do [ -f "$f" ] && echo "$f"; done)
if [ "${1:-}" = "--fix" ]; then
  clang-format -i "${files[@]}"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if ((${#bad[@]})); then
  echo "check_format: ${#bad[@]} file(s) differ from clang-format (run launch/check_format.sh --fix): ${bad[*]}"
  exit 1
fi
echo "check_format: ${#files[@]} files formatted"
