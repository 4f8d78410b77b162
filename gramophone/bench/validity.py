"""Is a sampled piece valid? Error rates per token by kind, independent of the automaton.

The validity table of the benchmark suite (issue 5) judges pieces the way the literature
does, not with gramophone's own automaton: a piece is **valid** when miditok's
``tokens_errors`` (duplicated notes counted) finds nothing and every bar's positions
stay in order and inside the bar.

Error kinds follow Fradet et al. 2023 (the rules of miditok's ``_tokens_errors``, counted
apart): **type** (a token type that may not follow the previous one in miditok's type
graph), **time** (a Position that does not move forward within a bar), **note** (a
pitch already played at the current onset). ``bar`` counts Positions at or beyond the
length of their bar, which miditok does not check.

>>> tok = __import__("gramophone.tokenizers", fromlist=["x"]).load_tokenizer()
>>> ok = "Bar_None TimeSig_4/4 Position_0 Pitch_60 Velocity_63 Duration_1.0.4".split()
>>> error_counts(tok, ok)
{'type': 0, 'time': 0, 'note': 0, 'bar': 0}
>>> bad = ok + "Position_0 Pitch_60 Pitch_60 Velocity_63 Duration_1.0.4 Position_99".split()
>>> error_counts(tok, [t for t in bad if t != "Position_99"])
{'type': 1, 'time': 1, 'note': 0, 'bar': 0}
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "Verdict", "error_counts", "is_valid", "judge", "miditok_error_ratio", "strip_specials"]

KINDS = ("type", "time", "note", "bar")
_NOTE_TYPES = ("Pitch", "NoteOn", "PitchDrum")


def strip_specials(tokenizer: Any, tokens: Sequence[str]) -> list[str]:
    """``tokens`` without BOS/EOS/PAD (miditok's type graph lets nothing follow EOS)."""
    specials = {t.split("_")[0] for t in tokenizer.special_tokens}
    return [t for t in tokens if t.split("_")[0] not in specials]


def _bar_length(tokenizer: Any, time_sig: str) -> int:
    """Positions in a bar of ``time_sig`` ("4/4"), as miditok's REMI counts them."""
    num = int(time_sig.split("/", maxsplit=1)[0])  # the beat is the denominator's note value
    return num * int(tokenizer.config.max_num_pos_per_beat)


def error_counts(tokenizer: Any, tokens: Sequence[str]) -> dict[str, int]:
    """Errors of each kind in a REMI token stream (names; special tokens are ignored).

    ``type + time + note`` equals miditok's ``_tokens_errors`` on the same stream (a test
    holds the two together); ``bar`` is counted on top.
    """
    toks = strip_specials(tokenizer, tokens)
    counts = dict.fromkeys(KINDS, 0)
    if not toks:
        return counts
    cfg = tokenizer.config
    graph = tokenizer.tokens_types_graph
    dedup = cfg.remove_duplicated_notes
    bar_len = _bar_length(tokenizer, "4/4")  # miditok's default time signature
    previous = toks[0].split("_")[0]
    pos = -1
    program = 0
    pitches: dict[int, set[int]] = {}
    if previous in _NOTE_TYPES:
        pitches.setdefault(program, set()).add(int(toks[0].split("_")[1]))
    elif previous == "Position":
        pos = int(toks[0].split("_")[1])
    before_previous = ""
    for tok in toks[1:]:
        kind, _, value = tok.partition("_")
        if kind not in graph[previous]:
            counts["type"] += 1
        elif tok == "Bar_None":
            pos, pitches = -1, {}
        elif kind == "TimeSig":
            bar_len = _bar_length(tokenizer, value)
        elif kind == "Rest":
            pitches = {}
        elif kind in _NOTE_TYPES:
            seen = pitches.setdefault(program, set())
            if dedup and int(value) in seen:
                counts["note"] += 1
            else:
                seen.add(int(value))
        elif kind == "Position":
            q = int(value)
            after_rest = previous == "Rest" or (previous == "TimeSig" and before_previous == "Rest")
            if q <= pos and not after_rest:
                counts["time"] += 1
            if bar_len and q >= bar_len:
                counts["bar"] += 1
            pos, pitches = q, {}
        elif kind == "Program":
            program = int(value)
        before_previous, previous = previous, kind
    return counts


def miditok_error_ratio(tokenizer: Any, ids: Sequence[int]) -> float:
    """miditok's own ``tokens_errors`` on ``ids`` without special tokens (0.0 when empty)."""
    from miditok import TokSequence

    specials = {tokenizer.vocab[t] for t in tokenizer.special_tokens}
    body = [int(i) for i in ids if int(i) not in specials]
    if not body:
        return 0.0
    return float(tokenizer.tokens_errors(TokSequence(ids=copy.copy(body))))


def is_valid(tokenizer: Any, ids: Sequence[int]) -> bool:
    """The suite's definition: miditok finds no error (duplicated notes counted) and every
    bar's positions stay in order and inside the bar."""
    names = [tokenizer[int(i)] for i in ids]
    counts = error_counts(tokenizer, names)
    return miditok_error_ratio(tokenizer, ids) == 0.0 and counts["time"] == 0 and counts["bar"] == 0


@dataclass(frozen=True)
class Verdict:
    """The judgement of one sampled stream: ``valid``, errors by kind, generated tokens."""

    valid: bool
    counts: dict[str, int]
    tokens: int


def judge(tokenizer: Any, ids: Sequence[int]) -> Verdict:
    """Judge a sampled stream (BOS first, EOS last when present): :func:`is_valid` on the
    body, and a special token inside the body is one more ``type`` error (and invalid)."""
    names = [tokenizer[int(i)] for i in ids]
    if names and names[0] == "BOS_None":
        names = names[1:]
    if names and names[-1] == "EOS_None":
        names = names[:-1]
    body = strip_specials(tokenizer, names)
    counts = error_counts(tokenizer, body)
    counts["type"] += len(names) - len(body)
    body_ids = [tokenizer.vocab[t] for t in body]
    valid = (
        len(body) == len(names)
        and miditok_error_ratio(tokenizer, body_ids) == 0.0
        and counts["time"] == 0
        and counts["bar"] == 0
    )
    return Verdict(valid, counts, len(names))
