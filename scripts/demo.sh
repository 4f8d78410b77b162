#!/usr/bin/env bash
# The main job (set-up included). Until decoding lands, it demonstrates the checker on
# real data: Bach chorales from music21's corpus are converted to MIDI (cached), tokenized
# with the shipped REMI config, checked, and a corrupted copy is diagnosed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${1:-out/demo}
mkdir -p "$OUT"
PY=.venv/bin/python
GRAM=.venv/bin/gramophone

mapfile -t MIDIS < <("$PY" -c "
from gramophone.data import chorale_midis
for p in chorale_midis()[:8]:
    print(p)
")
"$GRAM" tokenize "${MIDIS[@]}" --out "$OUT/tokens"
"$GRAM" check "$OUT"/tokens/*.json

# A model's typical mistakes: a duplicated note and a position going back in the bar.
"$PY" - "$OUT" <<'PY'
import sys
from pathlib import Path
out = Path(sys.argv[1])
src = sorted((out / "tokens").glob("*.txt"))[0]
toks = src.read_text().split()
i = next(k for k, t in enumerate(toks) if t.startswith("Pitch_"))
dup = toks[: i + 3] + toks[i : i + 3] + toks[i + 3 :]
(out / "corrupt-duplicate.txt").write_text(" ".join(dup))
pos = [k for k, t in enumerate(toks) if t.startswith("Position_")]
j = next(k for a, k in zip(pos, pos[1:]) if int(toks[k].split("_")[1]) > int(toks[a].split("_")[1]) + 1)
back = list(toks)
back[j] = "Position_0"
(out / "corrupt-backwards.txt").write_text(" ".join(back))
PY
echo
echo "Corrupted copies (exit status 1 expected):"
"$GRAM" check "$OUT"/corrupt-*.txt || true
echo
echo "Token files in $OUT/tokens; all chorales are cached as MIDI under ~/.cache/gramophone."
