"""The table that motivates the project: how valid are sampled pieces, by training loss
and by sampling mode? And how do they sound next to held-out chorales (statistics)?

Three models of one recipe are trained alike (same shape, data, steps, seed and
fill-in-the-middle share), differing only in the loss: ``ce``, ``ce+structural``,
``masked``. The full table uses the bundled model's recipe (the ``chorales-long``
preset, 4,000 updates of 8 x 512 tokens), so the comparison is made on models that use
their context (issue 11); its ``ce+structural`` row is the bundled model itself when the
package's model was trained with that recipe. Each model samples ``n`` pieces freely (no
automaton) and under the mask (the automaton, length-aware), with the same budget of
tokens, temperature 1. A piece is judged by :func:`gramophone.bench.validity.judge`,
which never uses the automaton.

Records: ``validity`` (metric ``valid_fraction``, keys ``training``, ``sampling``,
``n``; with the per-token error rates by kind, the model's validation NLL and, for
masked sampling, the mean probability mass the mask removed); ``music_stats`` (one
record per statistic and row, plus the held-out chorales of the test split).

Trained models are kept under ``cache_dir()/bench-runs/`` (keyed on their recipe) and
reused by a later run. Each takes hours on a CPU core; ``python -m
gramophone.bench.validity_table train LOSS`` trains one of them ahead (run two at once
on two cores), resuming an interrupted one.

:func:`run_models` makes the same rows for models trained elsewhere, on any backend (the
``hf`` backend's ``save_pretrained`` folders: the seed's Model 0 and its LoRA fine-tune,
``benchmarks/bench_hf.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gramophone.bench.common import markdown_table, record
from gramophone.bench.music_stats import STATS, mean_stats, piece_stats
from gramophone.bench.validity import KINDS, judge

__all__ = ["full_setup", "markdown", "plots", "run", "run_models", "train_variant"]

LOSSES = ("ce", "ce+structural", "masked")

#: Quick: seconds (tests). The full setup is :func:`full_setup`.
QUICK: dict[str, Any] = {
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_len": 256, "dropout": 0.0},
    "train": {"lr": 3e-3, "warmup_steps": 5, "total_steps": 30, "batch_size": 4, "seq_len": 128},
    "n": 12,
    "budget": 192,
}


def full_setup() -> dict[str, Any]:
    """The full table's setup: the bundled model's recipe (preset ``chorales-long``),
    100 pieces per row within 512 tokens."""
    from gramophone.backends.config import get_preset

    preset = get_preset("chorales-long")
    train = {k: v for k, v in dataclasses.asdict(preset.train).items() if k not in ("loss", "seed")}
    return {"model": dict(preset.model), "train": train, "n": 100, "budget": 512}


def _run_dir(setup: dict[str, Any], backend: str, loss: str) -> Path:
    from gramophone._files import cache_dir
    from gramophone.grammar import compile_remi
    from gramophone.tokenizers import load_tokenizer

    recipe = {"model": setup["model"], "train": setup["train"]}
    auto = compile_remi(load_tokenizer())
    key = hashlib.sha256(json.dumps([recipe, auto.hash, backend], sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "bench-runs" / key / loss.replace("+", "-")


def _bundled_if_same(setup: dict[str, Any], backend: str, loss: str) -> tuple[Path, dict[str, float]] | None:
    """The bundled model and its validation figures when it is this row's model: trained
    on ``backend`` (weights are framework-neutral; the recipe is what matters) with the
    setup's shape, training settings and ``loss``, seed 0."""
    from gramophone.backends.checkpoint import read_info
    from gramophone.models import bundled_checkpoint_path

    folder = bundled_checkpoint_path()
    info = read_info(folder)
    train = dataclasses.asdict(info.train) if info.train is not None else {}
    model = {k: v for k, v in dataclasses.asdict(info.model).items() if k != "vocab_size"}
    wanted = {**setup["train"], "loss": loss, "seed": 0}
    same_train = all(train.get(k) == v for k, v in wanted.items())
    evaluation = info.meta.get("evaluation", {}).get("validation")
    if same_train and model == setup["model"] and evaluation:
        return folder, evaluation
    return None


def train_variant(
    setup: dict[str, Any], backend: str, loss: str, progress: bool = False
) -> tuple[Path, dict[str, float]]:
    """Train (or reuse, or resume) the model of one ``loss``; returns its model folder and
    the validation metrics of :func:`gramophone.training.evaluate_split`."""
    from gramophone.backends import ModelConfig, TrainConfig
    from gramophone.grammar import compile_remi
    from gramophone.tokenizers import load_tokenizer
    from gramophone.training import RunConfig, train

    run_dir = _run_dir(setup, backend, loss)
    done = run_dir / "bench-eval.json"
    if not done.is_file():
        tok = load_tokenizer()
        auto = compile_remi(tok)
        model = ModelConfig(vocab_size=len(auto.vocab), **setup["model"])
        settings = {"label_smoothing": 0.0, **setup["train"], "loss": loss, "seed": 0}
        tcfg = TrainConfig(**settings)
        result = train(
            run_dir,
            backend=backend,
            config=RunConfig(model, tcfg, source=f"bench validity ({loss})"),
            resume=(run_dir / "checkpoints").is_dir(),
            checkpoint_every=max(1, min(100, tcfg.total_steps // 3)),
            val_windows=None,
            progress=progress,
            tokenizer=tok,
            automaton=auto,
        )
        if result.model_dir is None:
            raise RuntimeError(f"training {loss} stopped before the end")
        done.write_text(json.dumps({"model": str(result.model_dir)}))
    saved = json.loads(done.read_text())
    evaluation = json.loads((run_dir / "eval.json").read_text())
    return Path(saved["model"]), evaluation["validation"]


def _train_models(
    setup: dict[str, Any], backend: str, quick: bool
) -> dict[str, tuple[Path, dict[str, float]]]:
    """One model per loss (trained, reused, or the bundled one); loss -> (model folder,
    validation metrics)."""
    out: dict[str, tuple[Path, dict[str, float]]] = {}
    for loss in LOSSES:
        bundled = None if quick else _bundled_if_same(setup, backend, loss)
        out[loss] = bundled or train_variant(setup, backend, loss)
    return out


def _forbidden_mass(backend: Any, params: Any, auto: Any, streams: Sequence[Sequence[int]]) -> float:
    """Mean probability mass (temperature 1) the model put on tokens the grammar forbids,
    over every sampled position of masked streams: what the mask removed."""
    total, count = 0.0, 0
    for ids in streams:
        arr = np.asarray(ids, dtype=np.int32)[None, :]
        logits = backend.logits(params, arr[:, :-1])[0]  # (T-1, V): predicts ids[1:]
        states = auto.run_batch(arr.astype(np.int64))[0][1:-1]  # (T-1, K): after ids[: j + 1]
        allowed = auto.allowed_batch(states[None])[0]  # (T-1, V)
        z = logits - logits.max(axis=-1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=-1, keepdims=True)
        total += float((p * ~allowed).sum())
        count += len(p)
    return total / max(count, 1)


def run(quick: bool = False, backend: str = "torch") -> list[dict[str, Any]]:
    """Train the three models (or reuse them), sample, judge; see the module notes."""
    from gramophone.backends import get_backend

    setup = QUICK if quick else full_setup()
    be = get_backend(backend)
    records: list[dict[str, Any]] = []
    models = _train_models(setup, backend, quick)
    n, budget = int(setup["n"]), int(setup["budget"])
    for loss, (model_dir, val) in models.items():
        ckpt = be.load(model_dir)
        got, _ = _model_rows(loss, "gramophone-" + backend, be, ckpt.params, val, n=n, budget=budget)
        records.extend(got)
    records.extend(_held_out_stats(quick))
    return records


def _model_rows(
    label: str,
    system: str,
    be: Any,
    params: Any,
    val: dict[str, float] | None,
    *,
    n: int,
    budget: int,
) -> tuple[list[dict[str, Any]], dict[str, list[list[int]]]]:
    """The ``validity`` and ``music_stats`` records of one model (``training``: ``label``),
    sampled freely and under the mask, ``n`` pieces each within ``budget`` tokens; and the
    sampled streams by mode. ``val``: its validation metrics (None: not known)."""
    from gramophone.decoding import decoding_tables, prepare_prompt
    from gramophone.decoding.driver import sampler_for, split_batches
    from gramophone.decoding.loop import DecodeRequest
    from gramophone.decoding.rules import Sampling
    from gramophone.grammar import compile_remi
    from gramophone.tokenizers import decode_ids, load_tokenizer

    tok = load_tokenizer()
    auto = compile_remi(tok)
    tables = decoding_tables(auto)
    prompt = prepare_prompt(tables, auto, None)
    sample = sampler_for(be, params)
    records: list[dict[str, Any]] = []
    sampled: dict[str, list[list[int]]] = {}
    for mode in ("free", "masked"):
        streams: list[list[int]] = []
        for i, size in enumerate(split_batches(n, 50)):
            request = DecodeRequest(
                prompt.ids,
                prompt.state,
                size,
                budget,
                Sampling(),
                seed=1000 + i,
                constrained=mode == "masked",
            )
            streams.extend(sample(tables, request).streams())
        sampled[mode] = streams
        verdicts = [judge(tok, ids) for ids in streams]
        n_tokens = sum(v.tokens for v in verdicts)
        params_ = {"training": label, "sampling": mode, "n": len(verdicts), "budget": budget}
        rates = {
            f"{k}_errors_per_token": sum(v.counts[k] for v in verdicts) / max(n_tokens, 1) for k in KINDS
        }
        extra: dict[str, Any] = dict(rates)
        if val is not None:
            extra["validation_nll"] = round(val["nll"], 4)
            extra["validation_nll_allowed"] = round(val["nll_masked"], 4)
            extra["validation_forbidden_mass"] = round(val["forbidden_mass"], 4)
        if mode == "masked":
            extra["mask_removed_mass"] = _forbidden_mass(be, params, auto, streams)
        valid = sum(v.valid for v in verdicts) / len(verdicts)
        records.append(record("validity", system, "valid_fraction", valid, "fraction", **params_, **extra))
        scores = []
        for ids in streams:
            try:
                scores.append(piece_stats(decode_ids(tok, ids)))
            except Exception:  # a broken free-sampled piece has no statistics
                continue
        for stat, value in mean_stats(scores).items():
            records.append(record("music_stats", f"{label} / {mode}", stat, value, "", pieces=len(scores)))
    return records, sampled


def run_models(
    models: Mapping[str, tuple[str, str | Path]], n: int = 100, budget: int = 512
) -> tuple[list[dict[str, Any]], dict[str, dict[str, list[list[int]]]]]:
    """The validity rows of models trained elsewhere: ``models`` maps a row label to
    ``(backend, model folder)`` (an hf run's ``model/``; its validation metrics are read
    from the run's ``eval.json`` beside it when there is one, else from the checkpoint's
    meta, as an exported model keeps them). Returns the records and,
    per label, the sampled streams by mode (``free``, ``masked``)."""
    from gramophone.backends import get_backend
    from gramophone.models import load_checkpoint

    records: list[dict[str, Any]] = []
    streams: dict[str, dict[str, list[list[int]]]] = {}
    for label, (backend, folder) in models.items():
        be = get_backend(backend)
        loaded = load_checkpoint(be, folder)
        report = Path(folder).parent / "eval.json"
        if report.is_file():
            val = json.loads(report.read_text())["validation"]
        else:  # an exported model (the bundled one) keeps its figures in its meta
            val = loaded.meta.get("evaluation", {}).get("validation")
        system = "gramophone-" + backend
        got, streams[label] = _model_rows(label, system, be, loaded.params, val, n=n, budget=budget)
        records.extend(got)
    return records, streams


def _held_out_stats(quick: bool) -> list[dict[str, Any]]:
    from symusic import Score

    from gramophone.data import chorale_midis, chorale_names, split_names
    from gramophone.data.chorales import chorale_path

    chorale_midis(progress=False)
    test = split_names(chorale_names())["test"][: 12 if quick else None]
    scores = [piece_stats(Score(str(chorale_path(name)))) for name in test]
    return [
        record("music_stats", "held-out chorales", stat, value, "", pieces=len(scores))
        for stat, value in mean_stats(scores).items()
    ]


def markdown(records: Sequence[dict[str, Any]]) -> list[str]:
    rows = [r for r in records if r["benchmark"] == "validity"]
    cols = ["training", "sampling", "n", "value", *(f"{k}_errors_per_token" for k in KINDS)]
    cols += ["validation_nll", "validation_nll_allowed", "mask_removed_mass"]
    lines = [
        "## Valid pieces by training loss and sampling",
        "",
        "`value` is the fraction of valid pieces (miditok's `tokens_errors` finds nothing, duplicated",
        "notes counted, and every bar's positions stay in order and inside the bar); error rates",
        "are per generated token, by kind (Fradet et al. 2023: type, time, duplicated note; `bar`:",
        "a position beyond its bar). `validation_nll`: nats per token over the whole vocabulary;",
        "`validation_nll_allowed`: renormalised over the tokens the grammar allows (what masked",
        "sampling sees). `mask_removed_mass`: mean probability the model put on tokens the grammar",
        "forbids, at the positions of its masked samples. Free sampling runs to EOS or the budget.",
        "",
        *markdown_table(rows, cols),
        "",
        "## Musical statistics (sampled pieces next to held-out chorales)",
        "",
    ]
    table: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["benchmark"] == "music_stats":
            table.setdefault(r["system"], {"system": r["system"], "pieces": r["pieces"]})[r["metric"]] = r[
                "value"
            ]
    lines += markdown_table(table.values(), ["system", "pieces", *STATS])
    return [*lines, ""]


def plots(records: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["benchmark"] == "validity"]
    if not rows:
        return []
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.38
    for j, mode in enumerate(("free", "masked")):
        ys = [
            next((r["value"] for r in rows if r["training"] == t and r["sampling"] == mode), math.nan)
            for t in LOSSES
        ]
        ax.bar(np.arange(len(LOSSES)) + (j - 0.5) * width, ys, width, label=f"{mode} sampling")
    ax.set_xticks(np.arange(len(LOSSES)), LOSSES)
    ax.set_ylabel("valid pieces")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right")
    ax.set_title("Validity of sampled pieces by training loss")
    fig.tight_layout()
    path = out / "validity.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gramophone.bench.validity_table",
        description="Train ahead (or resume) one model of the full validity table, into the "
        "cache the benchmark reads (`gramophone bench --only validity`).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the model of one loss")
    train.add_argument("loss", choices=LOSSES)
    train.add_argument("--backend", default="torch", choices=("torch", "jax"))
    args = parser.parse_args(argv)
    setup = full_setup()
    if _bundled_if_same(setup, args.backend, args.loss) is not None:
        print(f"{args.loss}: the bundled model is this row's model; nothing to train")
        return
    folder, val = train_variant(setup, args.backend, args.loss, progress=True)
    print(f"{args.loss}: {folder} (validation NLL {val['nll']:.4f})")


if __name__ == "__main__":
    main()
