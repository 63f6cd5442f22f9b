#!/usr/bin/env bash
# Prep throughput in MB/s of text: samout_prep (encode + HDF5 write, tokenizer given) against
# SentencePiece's own spm_encode CLI on the same text with the same model (pure encode, 1 thread).
#   bench/data/bench_prep.sh [BUILD_DIR]      (default: $SAMOUT_BUILD or build)
# Text: the sample corpus's fortune files repeated to ~30 MB; the model: data/sample's tokenizer.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${1:-${SAMOUT_BUILD:-$ROOT/build}}"
SAMOUT_BUILD="$BUILD" bash "$ROOT/data/make_sample.sh" >/dev/null
MODEL="$ROOT/data/sample/tokenizer.model"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
F=/usr/share/games/fortunes
mapfile -t files < <(dpkg-query -L fortunes fortunes-min | grep -E "^$F/[a-z-]+$" | sort -u)
files+=("$F/tang300" "$F/song100")
for i in $(seq 0 10); do cat "${files[@]}" > "$TMP/part$i.txt"; done  # 11 files, ~30 MB
MB=$(du -cb "$TMP"/part*.txt | tail -1 | awk '{printf "%.1f", $1/1e6}')

secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
spm=$(secs bash -c "cat $TMP/part*.txt | spm_encode --model=$MODEL --output_format=id")
echo "text: $MB MB in 11 files; cores: $(nproc)"
printf "%-44s %6.2f MB/s\n" "baseline: spm_encode CLI (1 thread, ids)" "$(echo "$MB / $spm" | bc -l)"
for t in 1 $(nproc); do
  prep=$(secs "$BUILD/bin/samout_prep" --input="$TMP/part*.txt" --output="$TMP/out" \
         --tokenizer="$MODEL" --threads="$t" --progress=0)
  rate=$(echo "$MB / $prep" | bc -l)
  printf "%-44s %6.2f MB/s  (%.2fx spm_encode)\n" "samout_prep, $t thread(s), encode + HDF5" "$rate" \
         "$(echo "$spm / $prep" | bc -l)"
done
