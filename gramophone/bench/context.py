"""How much of its context a model uses: the NLL of Pitch tokens with the whole window
against only its last few tokens.

``gramophone bench --only context`` (this section) scores the bundled model (torch) on the
held-out test split of the chorales. For each window of ``seq_len`` (512) tokens
(:func:`context_windows`: full windows of the split, their scored ranges disjoint) it
takes the targets at positions ``first .. seq_len - 1`` (200 .. 511) that are ``Pitch``
tokens, and computes their NLL (nats, over the whole vocabulary, no mask)

* with the whole window before them (one forward pass of the window), and
* with only the last ``k`` input tokens (16, 64, ...): the ``k`` tokens ending at the
  target's input, run as a sequence of their own (positions ``0 .. k-1``, the way a
  model sees any window; :func:`pitch_context_nll`).

The headline, ``pitch_nll_gain_nats`` = NLL(last 16) - NLL(full context): what the
context beyond a chord (16 tokens: about one onset of four voices in REMI) is worth for
predicting a pitch. Key, voice leading over bars and repeated phrases live there; a model
that uses them gains tenths of a nat, one that does not gains ~0 (issue 11: 0.008 for the
model trained for 800 steps).

:func:`pitch_context_nll` takes any backend and parameters, so experiments and tests use
it on their own models and data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gramophone.bench.common import markdown_table, record

if TYPE_CHECKING:
    from gramophone.backends import Backend
    from gramophone.data.dataset import TokenSplit

__all__ = ["CONTEXTS", "ContextNLL", "context_windows", "markdown", "pitch_context_nll", "pitch_ids", "run"]

BENCH = "context"
CONTEXTS = (16, 64)
SEQ_LEN = 512
FIRST = 200
_ROWS = 64  # truncated contexts per forward pass (one shape per k: JAX compiles once)


def pitch_ids(vocab: Sequence[str]) -> np.ndarray:
    """int64[P]: the ids of the ``Pitch_*`` tokens of a vocabulary (``PitchDrum`` not)."""
    return np.array([i for i, t in enumerate(vocab) if t.startswith("Pitch_")], dtype=np.int64)


def context_windows(split: TokenSplit, seq_len: int = SEQ_LEN, first: int = FIRST) -> np.ndarray:
    """int64[W]: starts of full training windows of ``split`` (``seq_len + 1`` tokens inside
    one stream) whose scored targets (positions ``first .. seq_len - 1``) do not overlap:
    every token is scored at most once. Greedy over the sorted starts."""
    starts = split.windows(seq_len)
    ends = split.stream_starts[split.stream_of(starts) + 1]
    full = starts[starts + seq_len + 1 <= ends]
    out: list[int] = []
    covered = -1  # last position (into ids) scored so far
    for s in full:
        if s + 1 + first > covered:
            out.append(int(s))
            covered = int(s) + seq_len
    return np.array(out, dtype=np.int64)


def _log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """float64[N]: ``log p(target)`` from logits float32[N, V]."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(x).sum(axis=-1))
    return x[np.arange(len(targets)), targets] - logz


@dataclass(frozen=True)
class ContextNLL:
    """What :func:`pitch_context_nll` measured: the mean NLL (nats) of the scored Pitch
    targets with the whole window (``full``) and with the last ``k`` tokens (``last[k]``),
    over ``tokens`` targets of ``windows`` windows."""

    full: float
    last: dict[int, float]
    tokens: int
    windows: int

    def gain(self, k: int) -> float:
        """``last[k] - full``: what the context beyond the last ``k`` tokens is worth."""
        return self.last[k] - self.full


def pitch_context_nll(
    backend: Backend,
    params: Any,
    split: TokenSplit,
    vocab: Sequence[str],
    *,
    seq_len: int = SEQ_LEN,
    first: int = FIRST,
    contexts: Sequence[int] = CONTEXTS,
    max_windows: int | None = None,
    windows: np.ndarray | None = None,
) -> ContextNLL:
    """Mean NLL (nats) of the ``Pitch`` targets at positions ``first .. seq_len - 1`` of the
    windows of ``split`` (:func:`context_windows`, or ``windows``; the first
    ``max_windows`` of them), with the whole window as context and with only the last
    ``k`` input tokens for each ``k`` in ``contexts`` (each ``k <= first + 1``, so every
    scored target has ``k`` tokens before it inside the window). The NLL is over the whole
    vocabulary (no grammar mask), as ``nll`` of :func:`~gramophone.training.evaluate_split`.

    ``backend`` only needs ``logits(params, ids int32[B, T]) -> float32[B, T, V]``.
    """
    if any(k < 1 or k > first + 1 for k in contexts):
        raise ValueError(f"each context must be in 1 .. first + 1 = {first + 1}, got {list(contexts)}")
    if not 0 <= first < seq_len:
        raise ValueError(f"first must be in 0 .. seq_len - 1, got {first}")
    starts = context_windows(split, seq_len, first) if windows is None else np.asarray(windows, np.int64)
    if max_windows is not None:
        starts = starts[:max_windows]
    is_pitch = np.zeros(len(vocab), dtype=bool)
    is_pitch[pitch_ids(vocab)] = True
    full_lp: list[np.ndarray] = []
    trunc_lp: dict[int, list[np.ndarray]] = {k: [] for k in contexts}
    for s in starts:
        w = split.ids[s : s + seq_len + 1].astype(np.int32)
        inputs, targets = w[:-1], w[1:]
        t = np.flatnonzero(is_pitch[targets] & (np.arange(seq_len) >= first))  # scored positions
        if not t.size:
            continue
        logits = backend.logits(params, inputs[None])[0]  # (T, V)
        full_lp.append(_log_softmax_at(logits[t], targets[t]))
        for k in contexts:
            ctx = inputs[t[:, None] - k + 1 + np.arange(k)]  # (n, k): inputs[t-k+1 .. t]
            out = []
            for i in range(0, len(t), _ROWS):
                chunk = ctx[i : i + _ROWS]
                n = len(chunk)
                if n < _ROWS:  # one shape per k
                    chunk = np.concatenate([chunk, np.repeat(chunk[:1], _ROWS - n, axis=0)])
                out.append(backend.logits(params, chunk)[:n, -1])  # (n, V)
            trunc_lp[k].append(_log_softmax_at(np.concatenate(out), targets[t]))
    if not full_lp:
        raise ValueError(
            f"split {split.name!r}: no Pitch target at positions {first}..{seq_len - 1} of a full window"
        )
    return ContextNLL(
        full=-float(np.concatenate(full_lp).mean()),
        last={k: -float(np.concatenate(v).mean()) for k, v in trunc_lp.items()},
        tokens=int(sum(len(x) for x in full_lp)),
        windows=len(full_lp),
    )


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Score the bundled model with the torch backend on the test split (``quick``: the
    first 8 windows)."""
    from gramophone.backends import get_backend
    from gramophone.data.dataset import load_dataset
    from gramophone.models import load_checkpoint

    be = get_backend("torch")
    ck = load_checkpoint(be)  # the bundled model
    dataset = load_dataset(progress=False)
    got = pitch_context_nll(be, ck.params, dataset["test"], dataset.vocab, max_windows=8 if quick else None)
    common = {
        "model": "bundled",
        "checkpoint_step": ck.step,
        "split": "test",
        "seq_len": SEQ_LEN,
        "positions": f"{FIRST}-{SEQ_LEN - 1}",
        "tokens": got.tokens,
        "windows": got.windows,
    }
    system = "gramophone-torch"

    def nats(metric: str, value: float, context: str) -> dict[str, Any]:
        return record(BENCH, system, metric, round(value, 4), "nats", context=context, **common)

    records = [nats("pitch_nll", got.full, "full")]
    records += [nats("pitch_nll", got.last[k], f"last {k}") for k in CONTEXTS]
    records += [nats("pitch_nll_gain_nats", got.gain(16), "last 16 - full")]
    records += [nats(f"pitch_nll_gain_nats_{k}", got.gain(k), f"last {k} - full") for k in CONTEXTS[1:]]
    return records


def markdown(records: Sequence[dict[str, Any]]) -> list[str]:
    """The figures as a table, with what they mean."""
    if not records:
        return []
    r0 = records[0]
    lines = [
        f"Pitch tokens at positions {r0.get('positions')} of {r0.get('windows')} windows of "
        f"{r0.get('seq_len')} tokens of the held-out test chorales ({r0.get('tokens')} targets), "
        f"bundled model at step {r0.get('checkpoint_step')}: mean NLL in nats (whole vocabulary, "
        "no mask) with the whole window as context and with only the last k input tokens (run "
        "as a sequence of their own). `pitch_nll_gain_nats` = NLL(last 16) - NLL(full).",
        "",
    ]
    lines += markdown_table(records, ["context", "metric", "value", "unit"])
    return lines
