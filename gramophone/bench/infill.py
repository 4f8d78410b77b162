"""Infilling bars: the NLL of held-out bars given the bars before them only, or both sides.

``gramophone bench --only infill`` (this section). On the held-out test split of the
chorales (untransposed), holes of one or two bars are drawn at random (seeded) inside each
piece, with up to :data:`AROUND` bars kept on each side (fewer when the excerpt would not fit
the model's context). Each hole is scored as the decoder would see it:

* **prefix only**: ``BOS  bars before  Bar(A)  middle`` (any causal model);
* **both sides** (a model trained with ``fim_rate > 0``, :mod:`gramophone.data.fim`):
  ``bars after  BOS  bars before  Bar(A)  middle  EOS``, the suffix-first order of
  ``decode --infill`` for such a model.

The metric is the mean NLL (nats per token, whole vocabulary, no mask) of the middle's
tokens (everything after bar A's Bar token up to bar B+1's), the same tokens in both
contexts; the EOS that closes the middle in the second is reported apart. Models: the
bundled one, and any checkpoint named in ``$GRAMOPHONE_INFILL_CHECKPOINTS``
(``name=path,name=path``), on the torch backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gramophone.bench.common import markdown_table, record

__all__ = ["Hole", "holes", "infill_nll", "infill_validity", "markdown", "run"]

BENCH = "infill"
AROUND = 4  # bars kept on each side of a hole, at most


class Hole:
    """One hole: ``before`` (BOS + bars before + bar A's Bar), ``middle``, ``after`` (the
    bars after, no EOS), as model ids."""

    def __init__(self, before: list[int], middle: list[int], after: list[int]) -> None:
        self.before, self.middle, self.after = before, middle, after


def holes(split: Any, vocab: Sequence[str], max_len: int, count: int, seed: int = 0) -> list[Hole]:
    """``count`` holes of 1-2 bars from the untransposed streams of ``split`` (a
    :class:`~gramophone.data.dataset.TokenSplit`), each with at least one bar on each side
    and the whole suffix-first sequence within ``max_len``."""
    names = list(vocab)
    bos, eos = names.index("BOS_None"), names.index("EOS_None")
    starts_bar = np.array([n.split("+")[0] == "Bar_None" for n in names])
    rng = np.random.default_rng(seed)
    streams = [i for i in range(split.num_streams) if split.stream_offset[i] == 0]
    out: list[Hole] = []
    tries = 0
    while len(out) < count and tries < 50 * count:
        tries += 1
        ids = split.stream(int(rng.choice(streams))).tolist()
        body = ids[1:-1] if ids and ids[-1] == eos else ids[1:]
        bars = [j for j, t in enumerate(body) if starts_bar[t]]
        if len(bars) < 4:
            continue
        size = int(rng.integers(1, 3))
        a = int(rng.integers(1, len(bars) - size))  # bar index of the hole's first bar (>= 1 before)
        b = a + size  # first bar after the hole
        lo, hi = max(0, a - AROUND), min(len(bars), b + AROUND)
        while True:
            start = bars[lo]
            end = bars[hi] if hi < len(bars) else len(body)
            before = [bos, *body[start : bars[a] + 1]]
            middle = body[bars[a] + 1 : bars[b]]
            after = body[bars[b] : end]
            if len(after) + len(before) + len(middle) + 1 <= max_len or (lo == a - 1 and hi == b + 1):
                break
            lo, hi = min(lo + 1, a - 1), max(hi - 1, b + 1)
        if len(after) + len(before) + len(middle) + 1 > max_len or not middle:
            continue
        out.append(Hole(before, middle, after))
    return out


def _nll(backend: Any, params: Any, ids: list[int], lo: int, hi: int) -> np.ndarray:
    """float64[hi - lo]: -log p(ids[t]) for t in lo..hi-1, one forward pass of ``ids``."""
    logits = np.asarray(backend.logits(params, np.asarray([ids[:hi]], dtype=np.int32)))[0].astype(np.float64)
    x = logits[lo - 1 : hi - 1]
    x = x - x.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(x).sum(axis=-1))
    t = np.asarray(ids[lo:hi])
    return logz - x[np.arange(len(t)), t]


def infill_nll(
    backend: Any, params: Any, cases: Sequence[Hole], eos: int, both_sides: bool
) -> dict[str, float]:
    """Mean NLL of the middles given the prefix (``prefix_nll``) and, with ``both_sides``,
    given both sides (``both_nll``, and ``eos_nll`` of the EOS that closes the middle)."""
    pre: list[np.ndarray] = []
    both: list[np.ndarray] = []
    ends: list[float] = []
    for h in cases:
        ids = h.before + h.middle
        pre.append(_nll(backend, params, ids, len(h.before), len(ids)))
        if both_sides:
            ids = h.after + h.before + h.middle + [eos]
            got = _nll(backend, params, ids, len(h.after) + len(h.before), len(ids))
            both.append(got[:-1])
            ends.append(float(got[-1]))
    out = {"prefix_nll": float(np.concatenate(pre).mean()), "tokens": float(sum(len(p) for p in pre))}
    if both_sides:
        out["both_nll"] = float(np.concatenate(both).mean())
        out["eos_nll"] = float(np.mean(ends))
    return out


def _checkpoints() -> dict[str, Path | None]:
    out: dict[str, Path | None] = {"bundled": None}
    for item in filter(None, os.environ.get("GRAMOPHONE_INFILL_CHECKPOINTS", "").split(",")):
        name, _, path = item.partition("=")
        out[name.strip()] = Path(path.strip())
    return out


def infill_validity(
    loaded: Any, cases: Sequence[Hole], sampling: Any, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Infill each hole once freely (no automaton) and once under the mask, through the
    code ``gramophone decode --infill`` runs (:func:`~gramophone.decoding.infill.plan_infill`,
    :func:`~gramophone.decoding.driver.prepare_infill`, the backend's loop), and judge the
    spliced pieces without the automaton. Per mode: ``valid`` (the share that is finished,
    keeps the piece's number of bars and that :func:`gramophone.bench.validity.judge` finds
    valid), with ``finished`` (the middle ended with EOS within the budget) and
    ``exact_bars`` (finished with exactly the hole's bars) apart; ``n``: holes infilled
    (a hole whose excerpt is not a complete valid piece is left out)."""
    from gramophone.bench.validity import judge
    from gramophone.decoding.driver import prepare_infill, sampler_for
    from gramophone.decoding.infill import plan_infill
    from gramophone.decoding.loop import DecodeRequest
    from gramophone.errors import DecodingError
    from gramophone.tokenizers.learned import learned_vocab

    tok = loaded.tokenizer
    learned = learned_vocab(tok)
    vocab = list(loaded.automaton.vocab)
    bar_id, eos = vocab.index("Bar_None"), vocab.index("EOS_None")
    sees_suffix = loaded.train is not None and loaded.train.fim_rate > 0
    sample = sampler_for(loaded.backend, loaded.params)
    tallies = {mode: {"valid": 0, "finished": 0, "exact_bars": 0} for mode in ("free", "masked")}
    n = 0
    for i, h in enumerate(cases):
        piece = [*h.before, *h.middle, *h.after, eos]
        first = h.before.count(bar_id)
        last = first + h.middle.count(bar_id)
        try:
            plan = plan_infill(piece, loaded.automaton, learned, (first, last))
            tables, prompt, _, loop_budget = prepare_infill(
                loaded.automaton, plan, None, loaded.config.max_len, learned=learned, sees_suffix=sees_suffix
            )
        except DecodingError:
            continue
        n += 1
        context = len(prompt.ids) - len(plan.prefix)
        for mode, tally in tallies.items():
            request = DecodeRequest(
                prompt.ids,
                prompt.state,
                1,
                loop_budget,
                sampling,
                seed=seed + i,
                constrained=mode == "masked",
            )
            stream = [int(t) for t in sample(tables, request).streams()[0]][context:]
            if stream[-1:] != [eos]:
                continue
            tally["finished"] += 1
            spliced = plan.splice(stream)
            if spliced.count(bar_id) != piece.count(bar_id):
                continue
            tally["exact_bars"] += 1
            tally["valid"] += judge(tok, spliced).valid
    return {mode: {**{k: v / max(n, 1) for k, v in t.items()}, "n": n} for mode, t in tallies.items()}


def run(quick: bool = False) -> list[dict[str, Any]]:
    from gramophone.data import load_dataset
    from gramophone.decoding.driver import load_model
    from gramophone.decoding.rules import DEFAULT_SAMPLING

    records: list[dict[str, Any]] = []
    count = 40 if quick else 300
    sampled = 8 if quick else 100
    for name, path in _checkpoints().items():
        loaded = load_model("torch", path)
        data = load_dataset(loaded.tokenizer, progress=False)
        vocab = data.vocab
        cases = holes(data["test"], vocab, loaded.config.max_len, count)
        rate = loaded.train.fim_rate if loaded.train is not None else 0.0
        fim = rate > 0
        got = infill_nll(loaded.backend, loaded.params, cases, list(vocab).index("EOS_None"), fim)
        extra = {"holes": len(cases), "tokens": int(got["tokens"]), "fim_rate": rate}
        records.append(record(BENCH, name, "prefix_nll", got["prefix_nll"], "nats/token", **extra))
        if fim:
            records.append(record(BENCH, name, "both_sides_nll", got["both_nll"], "nats/token", **extra))
            records.append(
                record(BENCH, name, "gain_nats", got["prefix_nll"] - got["both_nll"], "nats/token", **extra)
            )
            records.append(record(BENCH, name, "closing_eos_nll", got["eos_nll"], "nats", **extra))
        valid = infill_validity(loaded, cases[:sampled], DEFAULT_SAMPLING)
        for mode, v in valid.items():
            records.append(
                record(
                    "infill_validity",
                    name,
                    "valid_fraction",
                    v["valid"],
                    "fraction",
                    sampling=mode,
                    n=int(v["n"]),
                    finished_fraction=v["finished"],
                    exact_bars_fraction=v["exact_bars"],
                    fim_rate=rate,
                )
            )
    return records


def markdown(records: Sequence[dict[str, Any]]) -> list[str]:
    nll = [r for r in records if r["benchmark"] == BENCH]
    valid = [r for r in records if r["benchmark"] == "infill_validity"]
    lines = [
        "NLL (nats/token) of held-out chorale bars (1-2 bar holes, up to 4 bars kept on each side) "
        "given the bars before them only, and, for a model trained in fill-in-the-middle order, "
        "given both sides.",
        "",
        *markdown_table(nll, ["system", "metric", "value", "unit", "holes", "tokens", "fim_rate"]),
    ]
    if valid:
        lines += [
            "",
            "Infilled pieces (the first holes above, one infill each at the default sampling "
            "settings, through `decode --infill`'s code), freely and under the mask: `value` is "
            "the share that ends within the budget, keeps the piece's number of bars and is "
            "valid by miditok's `tokens_errors` and the bar checks (never the automaton).",
            "",
            *markdown_table(
                valid, ["system", "sampling", "n", "value", "finished_fraction", "exact_bars_fraction"]
            ),
        ]
    return lines
