"""Grammar core: compile time (cold, cached), automaton sizes, checker throughput.

Records: ``compile`` (``ms``, system ``gramophone``, ``cache`` cold/cached, ``config``),
``automaton_size`` (``states`` per component and of the dense product), ``checker``
(``tokens_per_s``: ``gramophone-check`` per stream as the CLI does, ``gramophone-numpy``
for all streams at once, and ``miditok`` ``tokens_errors``, on the same corpus).
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from gramophone.bench.common import markdown_table, record, timed

__all__ = ["markdown", "run"]


def _compile(quick: bool) -> list[dict[str, Any]]:
    from miditok import REMI, TokenizerConfig

    from gramophone.grammar import compile_remi
    from gramophone.tokenizers import load_tokenizer

    configs = {"shipped": load_tokenizer(), "miditok-default": REMI(TokenizerConfig())}
    if not quick:
        configs["rests+programs+dedup"] = REMI(
            TokenizerConfig(use_rests=True, use_programs=True, remove_duplicated_notes=True)
        )
    records = []
    old = os.environ.get("GRAMOPHONE_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GRAMOPHONE_CACHE"] = cache
        try:
            for name, tok in configs.items():
                cold = timed(partial(compile_remi, tok, use_cache=False), 3 if quick else 5)
                compile_remi(tok)  # fill the cache
                warm = timed(partial(compile_remi, tok), 5 if quick else 20)
                auto = compile_remi(tok)
                for kind, samples in (("cold", cold), ("cached", warm)):
                    ms = round(1000 * statistics.median(samples), 2)
                    records.append(record("compile", "gramophone", "ms", ms, "ms", config=name, cache=kind))
                for comp in auto.components:
                    records.append(
                        record(
                            "automaton_size",
                            "gramophone",
                            "states",
                            comp.num_states,
                            "states",
                            config=name,
                            component=comp.name,
                            table_mib=round(comp.transitions.nbytes / 2**20, 2),
                            vocab=len(auto.vocab),
                        )
                    )
                try:
                    value: int | None = auto.product(max_states=500_000).num_states
                except ValueError:
                    value = None  # over the limit
                records.append(
                    record(
                        "automaton_size",
                        "gramophone",
                        "states",
                        value,
                        "states",
                        config=name,
                        component="dense product",
                        table_mib=round(value * len(auto.vocab) * 4 / 2**20, 1) if value else None,
                        vocab=len(auto.vocab),
                        notes=None if value else "over 500,000 states: stepped in lockstep",
                    )
                )
        finally:
            if old is None:
                del os.environ["GRAMOPHONE_CACHE"]
            else:
                os.environ["GRAMOPHONE_CACHE"] = old
    return records


def corpus_streams(limit: int | None = None) -> list[list[int]]:
    """Token ids of the chorales (all, or the first ``limit``) under the shipped config."""
    from symusic.core import ScoreTick

    from gramophone.data import chorale_midis
    from gramophone.tokenizers import encode_score, load_tokenizer

    tok = load_tokenizer()
    paths = chorale_midis(progress=False)[:limit]
    return [list(ids) for p in paths for ids in encode_score(tok, ScoreTick(p))]


def _checker(quick: bool) -> list[dict[str, Any]]:
    from miditok import TokSequence

    from gramophone.grammar import compile_remi
    from gramophone.grammar.checker import check_stream
    from gramophone.tokenizers import load_tokenizer

    tok = load_tokenizer()
    auto = compile_remi(tok)
    streams = corpus_streams(60 if quick else None)
    n_tokens = sum(len(s) for s in streams)

    def ours() -> None:
        for ids in streams:
            if not check_stream(auto, ids).valid:
                raise AssertionError("a chorale was rejected")

    def batch() -> None:
        arr = np.zeros((len(streams), max(len(s) for s in streams)), dtype=np.int64)
        for i, s in enumerate(streams):
            arr[i, : len(s)] = s
        auto.run_batch(arr)

    def theirs() -> None:
        for ids in streams:
            tok.tokens_errors(TokSequence(ids=list(ids)))

    records = []
    for system, fn, note in (
        ("gramophone-check", ours, "check_stream per stream, with diagnostics, as the CLI"),
        ("gramophone-numpy", batch, "Automaton.run_batch: all streams at once"),
        ("miditok", theirs, "tokens_errors per stream"),
    ):
        best = min(timed(fn, 2 if quick else 3))
        records.append(
            record(
                "checker",
                system,
                "tokens_per_s",
                round(n_tokens / best),
                "tokens/s",
                streams=len(streams),
                tokens=n_tokens,
                notes=note,
            )
        )
    return records


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every grammar-core record (``quick``: fewer repeats, 60 chorales)."""
    return _compile(quick) + _checker(quick)


def markdown(records: Sequence[dict[str, Any]]) -> list[str]:
    """The grammar section of a report."""
    lines = ["## Compile time", ""]
    by_cfg: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["benchmark"] == "compile" and r["system"] == "gramophone":
            by_cfg.setdefault(r["config"], {"config": r["config"]})[r["cache"] + " (ms)"] = r["value"]
    lines += markdown_table(by_cfg.values(), ["config", "cold (ms)", "cached (ms)"])
    lines += ["", "## Automaton sizes", ""]
    sizes = [r for r in records if r["benchmark"] == "automaton_size"]
    lines += markdown_table(sizes, ["config", "component", "value", "table_mib", "vocab"])
    lines += ["", "## Checker throughput (Bach chorales, shipped config)", ""]
    checks = [r for r in records if r["benchmark"] == "checker"]
    lines += markdown_table(checks, ["system", "value", "streams", "tokens", "notes"])
    ours = next((r["value"] for r in checks if r["system"] == "gramophone-check"), None)
    theirs = next((r["value"] for r in checks if r["system"] == "miditok"), None)
    if ours and theirs:
        lines += ["", f"gramophone check / miditok tokens_errors: **{ours / theirs:.2f}x** (same run)."]
    return [*lines, ""]
