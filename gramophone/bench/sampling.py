"""Sampling rules: what a decoding step costs under each of them, and the noise they need.

One record per (tokenizer, rule, system), at batch 64 along the chorales' streams (as in
:mod:`benchmarks.peers`: each step timed on its own, from logits just written into the array
it reads to the next state):

- ``sample_step`` (µs per step for the whole batch): :func:`gramophone.kernels.numba.step`
  (``gramophone-numba``, in place with ``out=``) and the numpy kernels' ``allowed``,
  ``choose`` and ``advance`` (``gramophone-numpy``), for greedy decoding, temperature 1
  (Gumbel-max), top-k 20 and top-p 0.95 (``decode``'s default). Both get the same Gumbel
  noise, drawn beforehand, and must choose the same tokens (the numba step is the numpy
  rules bit for bit; a difference is recorded as an error);
- ``gumbel_noise`` (µs per step): drawing that noise with numpy
  (``default_rng().gumbel(size=(64, V)).astype(float32)``), which a sampling loop pays
  on top of the step unless it draws its noise elsewhere (on a GPU, with the logits).

Tokenizers: the shipped config (``remi``) and the same config with a BPE vocabulary of
30,000 tokens trained on the chorales (``remi+bpe30k``, see :mod:`gramophone.bench.vocab`);
``quick``: the shipped config alone, fewer steps.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gramophone.bench.common import markdown_table, record
from gramophone.decoding.rules import Sampling

__all__ = ["RULES", "markdown", "run"]

#: The rules measured, by the name the records give them.
RULES: dict[str, Sampling] = {
    "greedy": Sampling(greedy=True),
    "temperature 1": Sampling(temperature=1.0),
    "top-k 20": Sampling(temperature=1.0, top_k=20),
    "top-p 0.95": Sampling(temperature=1.0, top_p=0.95),
}
BATCH = 64


def _time(
    step: Callable[[int], np.ndarray], prepare: Callable[[int], None], steps: int, repeats: int
) -> tuple[float, np.ndarray]:
    """Median µs per step over ``repeats`` passes (after one untimed pass), and the tokens
    ``int[B, steps]`` of the untimed pass. ``prepare(t)`` (untimed) puts step ``t``'s
    logits in place (and at ``t = 0`` the start states); ``step(t)`` returns its tokens."""
    passes, chosen = [], np.zeros((BATCH, steps), np.int64)
    for i in range(repeats + 1):
        seconds = 0.0
        for t in range(steps):
            prepare(t)
            t0 = time.perf_counter()
            tok = step(t)
            seconds += time.perf_counter() - t0
            if i == 0:
                chosen[:, t] = tok
        if i:
            passes.append(1e6 * seconds / steps)
    return statistics.median(passes), chosen


def _records(name: str, tokenizer: Any, steps: int, repeats: int) -> list[dict[str, Any]]:
    from gramophone.bench.common import import_section
    from gramophone.bench.vocab import _streams
    from gramophone.decoding import decoding_tables
    from gramophone.grammar import compile_tokenizer
    from gramophone.kernels import numba as nb
    from gramophone.kernels import numpy as npk
    from gramophone.tokenizers import model_vocab

    peers = import_section("benchmarks.peers")
    learned = model_vocab(tokenizer)
    tables = decoding_tables(compile_tokenizer(tokenizer), learned=learned)
    V = tables.vocab_size
    tokens = peers._walk_tokens([[1, *s] for s in _streams(tokenizer, 120)], BATCH, steps)
    logits = peers._logits(tokens, V)  # noise with each stream's real next token on top
    rng = np.random.default_rng(0)
    noise = rng.gumbel(size=(steps, BATCH, V)).astype(np.float32)
    t0 = time.perf_counter()
    for _ in range(steps):
        rng.gumbel(size=(BATCH, V)).astype(np.float32)
    noise_us = round(1e6 * (time.perf_counter() - t0) / steps, 1)
    common = {"tokenizer": name, "vocab_size": V, "batch": BATCH, "steps": steps, "repeats": repeats}
    how = "default_rng().gumbel(size=(B, V)).astype(float32)"
    out = [record("gumbel_noise", "numpy", "us_per_step", noise_us, "us", notes=how, **common)]
    tab = nb.device_tables(tables)
    start = tables.step(tables.start, tables.bos)
    remaining = 1 << 20
    buffer = np.empty((BATCH, V), np.float32)

    state: dict[str, np.ndarray] = {}

    def prepare(t: int) -> None:
        if t == 0:
            state["numba"] = np.tile(start, (BATCH, 1)).astype(np.int32)
            state["numpy"] = np.tile(start, (BATCH, 1))
        buffer[:] = logits[t]

    for rule, sampling in RULES.items():
        token = np.empty(BATCH, np.int32)

        def numba_step(t: int, sampling: Sampling = sampling, token: np.ndarray = token) -> np.ndarray:
            s = state["numba"]
            nb.step(tab, s, buffer, remaining, sampling=sampling, gumbel=noise[t], out=(token, s))
            return token

        def numpy_step(t: int, sampling: Sampling = sampling) -> np.ndarray:
            s = state["numpy"]
            with np.errstate(over="ignore", invalid="ignore"):
                tok = npk.choose(buffer, npk.allowed(tables, s, remaining), sampling, noise[t])
            state["numpy"] = npk.advance(tables, s, tok)
            return tok

        chosen = {}
        for system, step in (("gramophone-numba", numba_step), ("gramophone-numpy", numpy_step)):
            us, chosen[system] = _time(step, prepare, steps, repeats)
            out.append(record("sample_step", system, "us_per_step", round(us, 1), "us", sampling=rule,
                              status="ok", **common))  # fmt: skip
        differ = np.argwhere(chosen["gramophone-numba"] != chosen["gramophone-numpy"])
        if differ.size:
            b, t = (int(x) for x in differ[0])
            why = f"stream {b} step {t}: numba chose another token than the numpy rules"
            out[-2].update(status="error", value=None, notes=why)
    return out


def run(quick: bool = False) -> list[dict[str, Any]]:
    """The section (the shipped config alone and fewer steps with ``quick``)."""
    from gramophone.bench.vocab import trained_bpe
    from gramophone.tokenizers import load_tokenizer

    records = _records("remi", load_tokenizer(), 16 if quick else 128, 1 if quick else 3)
    if not quick:
        records += _records("remi+bpe30k", load_tokenizer(trained_bpe(30_000)), 16, 3)
    return records


def markdown(records: Sequence[dict[str, Any]]) -> list[str]:
    """One table: µs per step by tokenizer, rule and system; the noise's cost below."""
    return [
        "A decoding step at batch 64 under each sampling rule (µs for the whole batch, each "
        "step timed on its own from logits just written; the Gumbel noise drawn beforehand, "
        "the same for both systems, which chose the same tokens). gramophone-numba: "
        "`kernels.numba.step` (top-k and top-p through the numpy rules on its mask); "
        "gramophone-numpy: `allowed`, `choose`, `advance`.",
        "",
        *markdown_table(
            [r for r in records if r["benchmark"] == "sample_step"],
            ["tokenizer", "vocab_size", "sampling", "system", "value", "status"],
        ),
        "",
        "Drawing the noise with numpy, per step (what a loop that draws it on the CPU adds):",
        "",
        *markdown_table(
            [r for r in records if r["benchmark"] == "gumbel_noise"],
            ["tokenizer", "vocab_size", "system", "value", "unit"],
        ),
    ]
