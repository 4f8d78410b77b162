"""The seed's Model 0 under the grammar: a GPT-2 trained through gramophone (``train --backend
hf``) and its LoRA fine-tune towards the chorales in minor keys, each sampled freely and
under the mask (the validity table's rows, :func:`gramophone.bench.validity_table.run_models`),
and what the fine-tune did to the style (:mod:`gramophone.bench.style`): NLL on held-out
minor and major chorales that neither model saw, and the share of sampled pieces in minor.

Writes ``benchmarks/results/hf.json`` and ``hf.md`` (or ``--out DIR``)::

    .venv/bin/python benchmarks/bench_hf.py --base runs/model0-gpt2/model \\
        --lora runs/model0-lora-minor/model [--n 100] [--budget 512] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gramophone.bench import validity_table
from gramophone.bench.common import machine, markdown_table, record
from gramophone.bench.style import MODES, chorale_modes, minor_share, pieces_nll

BASE = "Model 0 (GPT-2)"
LORA = "Model 0 + LoRA (minor)"


def _held_out() -> dict[str, list[str]]:
    """The chorales of the validation and test splits, by annotated mode."""
    from gramophone.data import chorale_names, split_names

    parts = split_names(chorale_names())
    names = parts["validation"] + parts["test"]
    modes = chorale_modes(names)
    return {mode: [n for n in names if modes.get(n) == mode] for mode in MODES}


def _run_figures(label: str, folder: Path) -> list[dict[str, Any]]:
    """Training time, steps and the run's own evaluation, from the run folder."""
    run = folder.parent
    out = []
    report = json.loads((run / "eval.json").read_text())
    info = json.loads((run / "run.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = [r["tokens_per_s"] for r in rows if r.get("split") == "train"]
    extra = {"steps": report["step"], "source": info.get("source", "")}
    out.append(record("training", label, "train_time_s", report.get("train_time_s"), "s", **extra))
    if speeds:
        speeds.sort()
        out.append(record("training", label, "tokens_per_s_median", speeds[len(speeds) // 2], "tokens/s"))
    for split in ("validation", "test"):
        out.append(record("training", label, f"{split}_nll", report[split]["nll"], "nats/token"))
    return out


def run(base: Path, lora: Path, n: int, budget: int) -> list[dict[str, Any]]:
    from symusic import Score

    from gramophone.backends import get_backend
    from gramophone.data import chorale_path
    from gramophone.models import load_checkpoint
    from gramophone.tokenizers import decode_ids, load_tokenizer

    models = {BASE: ("hf", base), LORA: ("hf", lora)}
    t0 = time.perf_counter()
    records, streams = validity_table.run_models(models, n=n, budget=budget)
    records.append(record("timing", "validity rows", "seconds", round(time.perf_counter() - t0, 1), "s"))
    tok = load_tokenizer()
    held = _held_out()
    be = get_backend("hf")
    for label, (_, folder) in models.items():
        records.extend(_run_figures(label, Path(folder)))
        loaded = load_checkpoint(be, folder)
        for mode, names in held.items():
            got = pieces_nll(be, loaded.params, names, seq_len=min(512, loaded.model.max_len))
            records.append(
                record(
                    "style",
                    label,
                    f"nll_heldout_{mode}",
                    got["nll"],
                    "nats/token",
                    nll_allowed=got["nll_masked"],
                    pieces=got["pieces"],
                    tokens=got["tokens"],
                )
            )
        scores = [decode_ids(tok, ids) for ids in streams[label]["masked"]]
        share, pieces = minor_share(scores)
        records.append(
            record("style", label, "minor_share", share, "fraction", pieces=pieces, sampling="masked")
        )
    for mode, names in held.items():
        share, pieces = minor_share(Score(str(chorale_path(name))) for name in names)
        records.append(
            record("style", f"held-out chorales in {mode}", "minor_share", share, "fraction", pieces=pieces)
        )
    return records


def markdown(records: list[dict[str, Any]]) -> list[str]:
    lines = ["# The seed's Model 0 under the grammar", ""]
    lines += validity_table.markdown(records)
    table: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["benchmark"] in ("style", "training"):
            table.setdefault(r["system"], {"system": r["system"]})[r["metric"]] = r["value"]
    cols = ["system", "train_time_s", "tokens_per_s_median", "validation_nll", "test_nll"]
    cols += ["nll_heldout_minor", "nll_heldout_major", "minor_share"]
    lines += [
        "## Training and style",
        "",
        "`validation_nll`/`test_nll`: each run's own splits (Model 0: the chorales; the fine-tune: its",
        "minor subset's). `nll_heldout_*`: nats per token over the chorales of the validation and",
        "test splits in that mode (annotated key signature), which neither model trained on.",
        "`minor_share`: share of pieces the Krumhansl-Kessler key finder calls minor (sampled",
        "pieces: masked sampling, temperature 1; the held-out chorales: the estimator's calibration).",
        "",
        *markdown_table(table.values(), cols),
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", required=True, type=Path, help="Model 0's model/ folder (save_pretrained)")
    parser.add_argument("--lora", required=True, type=Path, help="the LoRA fine-tune's model/ folder")
    parser.add_argument("--n", type=int, default=100, help="pieces per model and sampling mode")
    parser.add_argument("--budget", type=int, default=512, help="tokens per piece")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    args = parser.parse_args(argv)
    records = run(args.base, args.lora, args.n, args.budget)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hf.json").write_text(json.dumps({"machine": machine(), "records": records}, indent=2) + "\n")
    text = "\n".join(markdown(records))
    (out / "hf.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
