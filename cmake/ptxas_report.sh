#!/usr/bin/env bash
# samout_ops' CUDA compiler launcher: runs the nvcc command line it is given and keeps what ptxas -v
# says of each kernel (entry, registers, stack, spills) in DIR/<source file>.txt, which the
# emulation test plans with (the residency of the kernels as compiled). Every other line of the
# compiler's output passes through, so the build log stays quiet.
#   ptxas_report.sh DIR nvcc ARGS...
dir="$1"
shift
src=""
prev=""
for a in "$@"; do
  [ "$prev" = "-c" ] && src="$a"
  prev="$a"
done
log="$(mktemp)"
"$@" 2>"$log"
rc=$?
report='^ptxas info|bytes stack frame'
if [ -n "$src" ] && grep -qE "$report" "$log"; then
  mkdir -p "$dir" && grep -E "$report" "$log" >"$dir/$(basename "$src").txt"
fi
grep -vE "$report" "$log" >&2
rm -f "$log"
exit $rc
