#!/usr/bin/env bash
# Reproduces the bundled model (gramophone/models/bundled): trains the `chorales-long` preset
# (gramophone/backends/config.py: d_model 256, d_ff 1024, 4 layers, 4,000 updates of
# 8 x 512 tokens, half of the windows in fill-in-the-middle order for --infill) with the
# torch backend into runs/bundled (or $RUN), resuming the run if one is there, then exports
# its final parameters, tokenizer.json and validation/test figures into the package.
# About 2.3 hours on one CPU core (a GPU is used when torch sees one; two DDP processes with
# torchrun took 1.55 hours on two shared cores). Interrupted (even by kill -9)? Run it again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# On two cores shared with other work, one intra-op thread trains faster than two
# (measured: ~1.5-6x, spin-waiting threads lose their core); set OMP_NUM_THREADS to change.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RUN=${RUN:-runs/bundled}
resume=()
if compgen -G "$RUN/checkpoints/step-*" >/dev/null; then
    resume=(--resume)
fi
.venv/bin/gramophone train --backend torch --preset chorales-long --checkpoint-every 100 "${resume[@]}" --out "$RUN"
.venv/bin/python - "$RUN" <<'PY'
import json
import sys
from pathlib import Path

from gramophone.training import export_model

run = Path(sys.argv[1])
dest = export_model(run / "model", Path("gramophone/models/bundled"))
report = json.loads((run / "eval.json").read_text())
print(f"bundled model -> {dest}")
for split in ("validation", "test"):
    print(f"  {split}: NLL {report[split]['nll']:.4f} nats/token over {report[split]['tokens']} tokens")
PY
