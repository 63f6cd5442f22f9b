#!/usr/bin/env bash
# Checkpoint cost for the seed configuration (21.3M parameters: weights plus Adam state, ~255 MB):
# the time a save takes (background thread), the training stall it causes (the copy into host
# memory), and the time a resume takes to load it, all from samout_ddp's own log lines.
#   bash bench/ckpt/bench_ckpt.sh [build]      (target: stall <= 10% of the save time)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${1:-$ROOT/build}/bin/samout_ddp"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
common=(--flagfile="$ROOT/configs/seed.flags" --device=cpu --log_every=1000 --ckpt_dir="$TMP/ck" --keep_ckpts=2)
"$BIN" "${common[@]}" --steps=12 --ckpt_every=3 2> "$TMP/save.log"
"$BIN" "${common[@]}" --steps=13 2> "$TMP/load.log"
size=$(du -sb "$TMP/ck/step_00000012" | cut -f1)
python3 - "$TMP/save.log" "$TMP/load.log" "$size" <<'PY'
import re, sys
save = open(sys.argv[1]).read(); load = open(sys.argv[2]).read(); size = int(sys.argv[3])
written = [float(x) for x in re.findall(r"written in ([0-9.e-]+) s", save)]
paused = [float(x) / 1000 for x in re.findall(r"training paused ([0-9.e-]+) ms \(writing", save)]
loaded = [float(x) for x in re.findall(r"loaded in ([0-9.e-]+) s", load)]
w = sorted(written)[len(written) // 2]; p = sorted(paused)[len(paused) // 2]
print(f"checkpoint size            {size / 1e6:.1f} MB")
print(f"save (background), median  {w * 1000:.0f} ms over {len(written)} saves  ({size / 1e6 / w:.0f} MB/s)")
print(f"training stall, median     {p * 1000:.0f} ms over {len(paused)} async saves")
print(f"stall / save               {p / w:.3f}  (target <= 0.10)")
print(f"load on resume             {loaded[0] * 1000:.0f} ms")
PY
