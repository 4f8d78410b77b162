#!/usr/bin/env bash
# The main job (set-up included): decode pieces with the bundled model under the grammar's
# hard mask, writing per piece a miditok token file, MIDI, WAV and a piano-roll picture,
# and a page to listen to them (index.html), then check the token files with the grammar's checker.
#   scripts/demo.sh [OUT] [--backend jax] [more gramophone decode options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=out/demo
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    OUT=$1
    shift
fi
GRAM=.venv/bin/gramophone
"$GRAM" decode --backend torch --num 4 --seed 0 --out "$OUT" "$@"
echo
"$GRAM" check "$OUT"/piece-*.json
echo
test -s "$OUT/index.html"
echo "Pieces in $OUT: token files (.json, .txt), MIDI (.mid), audio (.wav), piano rolls (.png)."
echo "Listen and look: open $OUT/index.html in a browser (one static page, no server)."
