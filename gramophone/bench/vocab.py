"""Trained vocabularies: the decoding tables and the mask step at 10k and 30k tokens.

One question per record (see :mod:`gramophone.bench`), for the shipped REMI config (``remi``)
and the same config with a BPE vocabulary of 10,000 and 30,000 tokens trained on the 350
chorales with miditok's own recipe (``tokenizer.train(vocab_size=..., model="BPE")``, split
per bar; ``remi+bpe10k``, ``remi+bpe30k``):

- ``decode_tables``: ``size`` (MiB of every table a decoding loop reads), ``build_s``
  (cold, then from the cache) and the number of groups, with ``tokenizer`` and
  ``vocab_size``. The dense alternative, a lifted product table ``int32[S, V]``, is given as
  ``dense_mib`` for comparison (never built);
- ``mask_step``: as in :mod:`benchmarks.peers`, with the learned vocabulary given to
  the peers natively (each learned token the concatenation of its base tokens' delimited
  names), on the chorales' learned streams. ``outlines-core`` is measured at its ``syntax``
  level with learned vocabularies: its full regex (4.6 MB) over 10k+ multi-terminal tokens
  does not compile in reasonable time.

The tokenizers are trained once and kept under ``cache_dir()/bench-tokenizers``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gramophone._files import cache_dir
from gramophone.bench.common import markdown_table, record

__all__ = ["markdown", "run", "trained_bpe"]

SIZES = {"remi+bpe10k": 10_000, "remi+bpe30k": 30_000}
#: peer levels with a learned vocabulary (the base vocabulary uses the peers section's)
LEARNED_LEVELS = {"xgrammar": ["full"], "llguidance": ["full"], "outlines-core": ["syntax"]}


def trained_bpe(vocab_size: int) -> Path:
    """The shipped config with a BPE vocabulary of ``vocab_size`` trained on the chorales
    (per bar, miditok's default), saved once under the cache."""
    from gramophone.data import chorale_midis
    from gramophone.tokenizers import load_tokenizer, save_tokenizer

    path = cache_dir() / "bench-tokenizers" / f"remi-bpe-{vocab_size}.json"
    if not path.is_file():
        tok = load_tokenizer()
        tok.train(vocab_size=vocab_size, model="BPE", files_paths=chorale_midis(progress=False))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tokenizer(tok, path)
    return path


def _streams(tokenizer: Any, limit: int) -> list[list[int]]:
    from symusic.core import ScoreTick

    from gramophone.data import chorale_midis
    from gramophone.tokenizers import encode_score

    paths = chorale_midis(progress=False)[:limit]
    return [list(ids) for p in paths for ids in encode_score(tokenizer, ScoreTick(p))]


def _table_records(name: str, tokenizer: Any) -> list[dict[str, Any]]:
    from gramophone.decoding import decoding_tables
    from gramophone.grammar import compile_tokenizer
    from gramophone.tokenizers import model_vocab

    auto = compile_tokenizer(tokenizer)
    learned = model_vocab(tokenizer)
    common = {"tokenizer": name, "vocab_size": len(learned)}
    t0 = time.perf_counter()
    cold = decoding_tables(auto, learned=learned, use_cache=False)
    cold_s = time.perf_counter() - t0
    decoding_tables(auto, learned=learned)  # fills the cache
    t0 = time.perf_counter()
    decoding_tables(auto, learned=learned)
    cached_s = time.perf_counter() - t0
    states = cold.meta.get("product_states")
    dense = None if states is None else round(states * len(learned) * 4 / 2**20, 1)
    return [
        record("decode_tables", "gramophone", "size", round(cold.nbytes / 2**20, 2), "MiB",
               groups=cold.num_groups, dense_mib=dense, **common),
        record("decode_tables", "gramophone", "build_s", round(cold_s, 3), "s", cache="cold", **common),
        record("decode_tables", "gramophone", "build_s", round(cached_s, 3), "s", cache="cached", **common),
    ]  # fmt: skip


def run(quick: bool = False) -> list[dict[str, Any]]:
    """The section: tables for every tokenizer, then the mask step (fewer steps and systems
    with ``quick``)."""
    from gramophone.bench.common import import_section

    peers = import_section("benchmarks.peers")
    OURS, PEERS, mask_step_records = peers.OURS, peers.PEERS, peers.mask_step_records
    from gramophone.tokenizers import load_tokenizer

    records: list[dict[str, Any]] = []
    tokenizers = {"remi": load_tokenizer()}
    for name, size in SIZES.items():
        if quick and size > 10_000:
            continue
        tokenizers[name] = load_tokenizer(trained_bpe(size))
    for name, tok in tokenizers.items():
        records += _table_records(name, tok)
    for name, tok in tokenizers.items():
        if name == "remi":
            continue  # the base vocabulary's mask step is the peers section's
        streams = [[1, *s] for s in _streams(tok, 40 if quick else 120)]
        ours = ["gramophone-numpy", "gramophone-jax"] if quick else list(OURS)
        common = {"quick": quick, "tokenizer": tok, "tokenizer_name": name, "levels": LEARNED_LEVELS,
                  "isolate": not quick}  # fmt: skip
        records += mask_step_records(
            streams, steps=8 if quick else 32, repeats=1 if quick else 3, systems=ours, **common
        )
        if not quick:  # the peers take seconds per step at batch 64: fewer steps
            records += mask_step_records(streams, steps=8, repeats=1, systems=list(PEERS), **common)
    return records


def markdown(records: Sequence[dict[str, Any]]) -> list[str]:
    """Tables: decoding tables per tokenizer; mask step per tokenizer and system."""
    return [
        "Decoding tables (every array a loop reads) per tokenizer, against the dense lifted "
        "product table `int32[S, V]` the previous design would need:",
        "",
        *markdown_table(
            [r for r in records if r["benchmark"] == "decode_tables"],
            ["tokenizer", "vocab_size", "metric", "value", "unit", "cache", "groups", "dense_mib"],
        ),
        "",
        "Mask step (µs per step for the whole batch; learned vocabularies given to the peers "
        "natively). `path`: gramophone's cheap mask (most steps), exact mask (the last steps "
        "of a budget) and the floor (the same gather, where and argmax on a table that stays "
        "in cache). Timed as in `peers.md`: each step on its own, from logits just written "
        "into the array it reads to the next state; gramophone's kernels in a fresh process "
        "each, the peers (seconds per step at batch 64) over 8 steps, once.",
        "",
        *markdown_table(
            [r for r in records if r["benchmark"] == "mask_step"],
            ["tokenizer", "system", "grammar", "path", "loop", "batch", "value", "status"],
        ),
        "",
    ]
