"""Validity of token streams, with diagnostics a person can act on.

:func:`check_ids` runs a stream through an :class:`~gramophone.grammar.Automaton` and, at
the first violation, says where (index, token, the tokens before it), what rejected it
(the syntax, or which constraint, in words) and what was expected, summarized
("Position_13..31 or Bar_None").

A stream of a trained vocabulary (BPE, Unigram, WordPiece) is checked over the base tokens
its learned ids stand for (``check_stream(..., learned=vocab)``): the violation is still
found and explained in base tokens, and also names the learned token it sits in (its index
among the stream's ids and its base tokens).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from gramophone.grammar import composer
from gramophone.grammar.automaton import REJECT, Automaton

if TYPE_CHECKING:
    from gramophone.tokenizers.learned import LearnedVocab

__all__ = ["StreamReport", "Violation", "check_ids", "check_stream", "summarize_tokens"]

CONTEXT = 6  # tokens shown before a violation


END = "<end of stream>"


@dataclass(frozen=True)
class Violation:
    """The first place a stream leaves the language.

    ``index``, ``token``, ``before`` and ``expected`` are in base tokens. For a stream of
    learned ids, ``learned_index`` is the index among the stream's ids of the learned token
    the offending base token comes from (the number of ids when the stream ends early) and
    ``learned_token`` its base tokens joined by ``+``; both are ``None`` for a base stream.
    """

    index: int  # position of the offending token; len(stream) when the stream ends early
    token: str  # the token, or "<end of stream>"
    before: tuple[str, ...]  # up to CONTEXT tokens before it
    rejected_by: str  # "syntax", a constraint's name, or "end"
    reason: str
    expected: str
    learned_index: int | None = None
    learned_token: str | None = None

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (the ``learned_*`` keys only for a stream of learned ids)."""
        d = asdict(self)
        d["before"] = list(self.before)
        if self.learned_index is None:
            del d["learned_index"], d["learned_token"]
        return d

    @property
    def where(self) -> str:
        """Where it is, in words: ``token 6 (Position_4)``, or for learned ids ``base token 31
        (Position_0) in learned token 12 (Pitch_60+Velocity_71+Duration_1.0.4)``."""
        if self.learned_index is None:
            return f"token {self.index} ({self.token})"
        if self.token == END:
            return f"base token {self.index} ({END}, after {self.learned_index} learned tokens)"
        learned = f"learned token {self.learned_index} ({self.learned_token})"
        return f"base token {self.index} ({self.token}) in {learned}"

    def __str__(self) -> str:
        ctx = " ".join(self.before)
        ctx = f" after '{ctx}'" if ctx else ""
        return f"{self.where}{ctx}: {self.reason}; expected {self.expected}"


def _kind(token: str) -> str:
    return token.partition("_")[0]


def summarize_tokens(vocab: Sequence[str], mask: np.ndarray, limit: int = 4) -> str:
    """Summarize allowed tokens by type and runs of consecutive ids: "Position_13..31"."""
    ids = np.nonzero(mask)[0]
    if ids.size == 0:
        return "nothing"
    groups: dict[str, list[list[int]]] = {}
    for i in ids.tolist():
        runs = groups.setdefault(_kind(vocab[i]), [])
        if runs and runs[-1][-1] == i - 1 and _kind(vocab[runs[-1][-1]]) == _kind(vocab[i]):
            runs[-1].append(i)
        else:
            runs.append([i])
    parts = []
    for runs in groups.values():
        shown = []
        for run in runs[:limit]:
            first, last = vocab[run[0]], vocab[run[-1]]
            shown.append(first if len(run) == 1 else f"{first}..{last.partition('_')[2]}")
        if len(runs) > limit:
            shown.append(f"... ({sum(len(r) for r in runs)} in all)")
        parts.append(", ".join(shown))
    return " or ".join(parts)


def _last_of(names: Sequence[str], kinds: set[str]) -> str | None:
    for tok in reversed(names):
        if _kind(tok) in kinds:
            return tok
    return None


def _explain(automaton: Automaton, k: int, state: int, token: str, history: Sequence[str]) -> str:
    comp = automaton.components[k]
    kind, _, value = token.partition("_")
    prev = history[-1] if history else None
    if comp.name == "syntax":
        if prev is None:
            return f"a stream cannot start with {token}"
        return f"the syntax does not allow {token} after {prev}"
    info = comp.info
    if comp.name == "time":
        pos = int(info["position"][state])
        length = int(info["bar_length"][state])
        ts_idx = int(info["time_signature"][state])
        if ts_idx < 0:
            return f"a stream cannot start with {token} (the first bar needs its Bar token first)"
        ts = str(info["time_signature_names"][ts_idx])
        if kind == "Position":
            q = int(value)
            if q >= length:
                return f"{token} is beyond the bar's length ({length} positions in {ts})"
            last_time = _last_of(history, {"Position", "Bar", "Rest", "TimeSig"})
            if last_time is not None and _kind(last_time) == "Rest":
                return f"{token} comes before the end of the preceding rest (position {pos + 1} of the bar)"
            if last_time is not None and _kind(last_time) == "Position":
                if q == pos:
                    return f"{token} repeats the position of the bar it is already at"
                return f"{token} goes back within the bar after {last_time}"
            return f"{token} is not allowed here (last position {pos})"
        if kind == "TimeSig":
            return f"{token} may only come at the start of a bar"
        if kind == "Rest":
            return f"{token} cannot open a stream that has time signatures"
        return f"the time constraint forbids {token}"
    if comp.name == "note-order":
        last = int(info["last_pitch"][state])
        program = int(info["program"][state])
        if kind in ("Pitch", "PitchDrum"):
            if int(value) == last:
                return f"{token} duplicates a note already played at this onset"
            return (
                f"{token} breaks the canonical order of notes at one onset "
                f"(pitches ascend; the last was {last})"
            )
        if kind == "Chord":
            return f"{token} comes after a note of its program at this onset (chords come first)"
        if kind in ("Program", "Pedal", "PedalOff"):
            return (
                f"{token} follows the highest pitch of Program_{program} at this onset "
                "(no higher note is left for it)"
            )
        return f"the note-order constraint forbids {token}"
    if comp.name.startswith("program-runs") and kind in ("Program", "Pedal", "PedalOff"):
        return (
            f"Program_{value} already had its run of notes at this onset (miditok writes each "
            "program's events at one onset together, once)"
        )
    if comp.name == "drum-pitch":
        if int(info["program"][state]) == -1:
            what = "a chord" if kind == "Chord" else "a melodic pitch"
            return f"{token} is {what} under Program_-1 (drums), which miditok never writes"
        under = _last_of(history, {"Program"}) or "a melodic program"
        return f"{token} is a drum pitch under {under}: miditok writes drum pitches under Program_-1 only"
    if comp.name.startswith("pairing[") and kind in ("NoteOn", "DrumOn"):
        cap = int(info["max_open"][0])
        notes = "a note" if cap == 1 else f"{cap} notes"
        return (
            f"{token} strikes pitch {value} again while {notes} of it {'is' if cap == 1 else 'are'} "
            f"still sounding: gramophone's MIDILike grammar allows at most {cap} open at once "
            "(max_open_per_pitch), though miditok writes overlapping notes of equal pitch"
        )
    if comp.name.startswith("pairing[") and kind in ("NoteOff", "DrumOff"):
        return f"{token} closes no sounding note of pitch {value}"
    if comp.name == "open-notes":
        n = int(info["open"][state])
        if token == "EOS_None":
            notes = f"{n} note{'s' if n != 1 else ''}"
            return f"{token} leaves {notes} sounding (each NoteOn needs its NoteOff first)"
        if kind in ("NoteOff", "DrumOff"):
            return f"{token} closes a note, but no note of this program is sounding"
        if "capacity" in info:
            cap = int(info["capacity"][0])
            return (
                f"{token} would be note {int(info['current_open'][state]) + 1} sounding at once in its "
                f"program: gramophone's MIDILike grammar counts at most {cap} per program (a bound "
                "that shrinks with the number of programs; miditok has none)"
            )
        return f"{token} would open more notes at once than the grammar counts ({n} are sounding)"
    if comp.name == "onset-order" and kind in ("NoteOn", "DrumOn"):
        last = int(info["last_pitch"][state])
        return f"{token} breaks the ascending order of note-ons at one onset (the last was {last})"
    why = composer.explain(comp, state, token)  # --key, --pitch-range, ... (None: not one of them)
    return why if why is not None else f"the constraint '{comp.name}' forbids {token}"


@dataclass(frozen=True)
class StreamReport:
    """The outcome of checking one stream: ``tokens``, the base tokens before the violation
    (all of them if valid); for learned ids ``learned_tokens``, the learned tokens before the
    one the violation sits in (all of them if valid), else ``None``."""

    tokens: int
    violation: Violation | None
    learned_tokens: int | None = None

    @property
    def valid(self) -> bool:
        return self.violation is None


_TIME_KINDS = frozenset({"Position", "Bar", "Rest", "TimeSig"})


def check_stream(
    automaton: Automaton, ids: Iterable[int], *, learned: LearnedVocab | None = None
) -> StreamReport:
    """Check a stream given as any iterable of ids (read lazily: large inputs are streamed).

    ``ids`` are base ids (the automaton's vocabulary), or with ``learned`` (a trained
    vocabulary over that base vocabulary) learned ids: they are expanded into base tokens
    and a violation also names the learned token it sits in. An untrained ``learned`` (the
    identity) is the same as none.
    """
    if learned is not None and learned.trained:
        return _check_learned(automaton, list(ids), learned)
    vocab = automaton.vocab
    V = len(vocab)
    flats = automaton.flat_tables
    states = [int(c.start) for c in automaton.components]
    recent: deque[int] = deque(maxlen=CONTEXT)
    time_tokens = [_kind(t) in _TIME_KINDS for t in vocab]
    last_time = -1
    n = 0
    for tok in ids:
        t = int(tok)
        nexts = [int(flat[s * V + t]) for flat, s in zip(flats, states, strict=True)]
        for k, nxt in enumerate(nexts):
            if nxt == REJECT:
                history = [vocab[i] for i in recent]
                if k != 0 and last_time >= 0 and (not history or vocab[last_time] not in history):
                    history_for_reason = [vocab[last_time], *history]
                else:
                    history_for_reason = history
                token = vocab[t]
                reason = _explain(automaton, k, states[k], token, history_for_reason)
                expected = _expected(automaton, states)
                name = automaton.components[k].name
                return StreamReport(n, Violation(n, token, tuple(history), name, reason, expected))
        states = nexts
        recent.append(t)
        if time_tokens[t]:
            last_time = t
        n += 1
    if automaton.is_accepting(states):
        return StreamReport(n, None)
    history = [vocab[i] for i in recent]
    reason = "the stream is empty" if n == 0 else f"the stream ends incomplete after {history[-1]}"
    for comp, s in zip(automaton.components, states, strict=True):
        why = None if comp.accepting[s] else composer.explain_end(comp, s)
        if why is not None:  # a composer constraint unfinished (--notes-per-bar: the last bar)
            reason += f": {comp.name}: {why}"
            break
    violation = Violation(n, END, tuple(history), "end", reason, _expected(automaton, states))
    return StreamReport(n, violation)


def _check_learned(automaton: Automaton, ids: list[int], learned: LearnedVocab) -> StreamReport:
    if learned.base != automaton.vocab:
        raise ValueError("the learned vocabulary is not over the automaton's vocabulary")
    base, owner = learned.expand(ids)
    report = check_stream(automaton, base)
    violation = report.violation
    if violation is None:
        return StreamReport(report.tokens, None, learned_tokens=len(ids))
    if violation.index < len(base):
        k = owner[violation.index]
        violation = dataclasses.replace(violation, learned_index=k, learned_token=learned.names[ids[k]])
    else:
        k = len(ids)
        violation = dataclasses.replace(violation, learned_index=k, learned_token=END)
    return StreamReport(report.tokens, violation, learned_tokens=k)


def _expected(automaton: Automaton, states: Sequence[int]) -> str:
    mask = automaton.allowed(states)
    expected = summarize_tokens(automaton.vocab, mask)
    if automaton.is_accepting(states):
        return f"{expected} or the end of the stream" if mask.any() else "the end of the stream"
    return expected


def check_ids(
    automaton: Automaton, ids: Iterable[int], *, learned: LearnedVocab | None = None
) -> Violation | None:
    """``None`` if ``ids`` is in the language, else the first :class:`Violation`
    (``learned``: see :func:`check_stream`)."""
    return check_stream(automaton, ids, learned=learned).violation
