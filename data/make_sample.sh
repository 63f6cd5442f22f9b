#!/usr/bin/env bash
# Builds the sample corpus from Debian's fortune packages into data/sample/ (ignored by git):
#   data/sample/train-00000.h5  data/sample/val-00000.h5  data/sample/tokenizer.model
# Chinese: the Tang 300 poems and Song 100 ci of fortunes-zh; English: every English file of
# fortunes and fortunes-min (see data/README.md for their licences). Reuses the existing output
# when the inputs and settings are unchanged, so calling it before every run is cheap.
#   SAMOUT_PREP  the samout_prep binary (default: $SAMOUT_BUILD/bin/samout_prep, built if absent)
#   SAMOUT_SAMPLE_VOCAB  vocabulary size (default 8192)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/data/sample"
BUILD="${SAMOUT_BUILD:-$ROOT/build}"
PREP="${SAMOUT_PREP:-$BUILD/bin/samout_prep}"
VOCAB="${SAMOUT_SAMPLE_VOCAB:-8192}"
FORTUNES=/usr/share/games/fortunes

for f in "$FORTUNES/tang300" "$FORTUNES/song100" "$FORTUNES/fortunes"; do
  [ -f "$f" ] || { echo "make_sample: $f missing: run launch/setup.sh (packages fortunes, fortunes-zh)" >&2; exit 2; }
done
# The English files: those of the two English packages, top level only (off/ is left out).
mapfile -t english < <(dpkg-query -L fortunes fortunes-min 2>/dev/null |
                       grep -E "^$FORTUNES/[a-z-]+$" | sort -u)
inputs=("$FORTUNES/tang300" "$FORTUNES/song100" "${english[@]}")
args=(--output="$OUT" --vocab_size="$VOCAB" --doc_separator=% --val_fraction=0.02 --seed=0)

# Reuse: a stamp holds the hash of the inputs' contents and the arguments.
stamp="$OUT/.inputs.sha256"
want="$( (printf '%s\n' "${args[@]}"; cat "${inputs[@]}") | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$OUT/tokenizer.model" ] &&
   compgen -G "$OUT/train-*.h5" >/dev/null && compgen -G "$OUT/val-*.h5" >/dev/null; then
  echo "make_sample: $OUT is up to date"
  exit 0
fi
if [ ! -x "$PREP" ]; then
  [ -f "$BUILD/CMakeCache.txt" ] || { echo "make_sample: no build in $BUILD: run launch/build.sh" >&2; exit 2; }
  cmake --build "$BUILD" --target samout_prep -j"$(nproc)"
fi
rm -f "$stamp"
joined="$(IFS=,; echo "${inputs[*]}")"
"$PREP" --input="$joined" "${args[@]}"
echo "$want" > "$stamp"
