#!/usr/bin/env bash
# Reproduces the seed's Model 0 (README: "Training a transformers model"): a GPT-2 of the
# `chorales` preset's shape trained with --backend hf into runs/model0-gpt2, then a LoRA
# fine-tune of it on the chorales in minor keys into runs/model0-lora-minor, then their rows
# of the validity table and the style figures (benchmarks/results/hf.json, hf.md).
# About 35-45 minutes of CPU on two shared cores. Interrupted (even by kill -9)? Run it again:
# each run resumes from its last checkpoint; a finished one is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one intra-op thread: see train_bundled.sh
BASE=${BASE:-runs/model0-gpt2}
LORA=${LORA:-runs/model0-lora-minor}

train() {  # train OUT ARGS...: start, resume, or keep a finished run
    local out=$1
    shift
    if [[ -f "$out/eval.json" ]]; then
        echo "$out: finished, kept"
    elif compgen -G "$out/checkpoints/step-*" >/dev/null; then
        .venv/bin/gramophone train --backend hf --resume --out "$out"
    else
        .venv/bin/gramophone train --backend hf "$@" --out "$out"
    fi
}

train "$BASE" --model gpt2 --preset chorales --steps 500 --checkpoint-every 100
mkdir -p runs/data
.venv/bin/python -m gramophone.bench.style --mode minor --splits train --out runs/data/minor-train
cat > runs/lora-minor.json <<'JSON'
{
  "train": {"lr": 1e-3, "warmup_steps": 15, "total_steps": 150, "batch_size": 8, "seq_len": 512,
            "loss": "ce+structural", "label_smoothing": 0.0, "structural_weight": 1.0},
  "data": {"transpose": [-5, 6]}
}
JSON
train "$LORA" --init "$BASE/model" --lora r=8,alpha=16,dropout=0.05 --config runs/lora-minor.json \
    --data runs/data/minor-train --checkpoint-every 50
.venv/bin/python benchmarks/bench_hf.py --base "$BASE/model" --lora "$LORA/model"
