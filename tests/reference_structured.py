"""Oracles for the Structured grammar, independent of its automaton: lark on the derived
grammar, a plain-Python reference of the note-order constraint, and miditok itself.

The note-order reference is written from what miditok's encoder does (not from
``gramophone.grammar.structured``): ``Structured._add_time_events`` writes
``TimeShift_0.0.1`` between notes that start together; with ``remove_duplicated_notes``
``MusicTokenizer._preprocess_notes`` sorts each track's notes by (time, pitch) and drops
repeated (time, pitch) pairs; with programs in one stream miditok merges the tracks of one
program and keeps the track order for notes at one time (a stable sort by time): each
program's notes of one onset come together, once, in the order of the score's tracks.
"""

from __future__ import annotations

from collections.abc import Sequence

from lark.exceptions import LarkError

from gramophone.grammar.structured import StructuredGrammar
from tests.reference import lark_parser, miditok_errors, pruned_lark, runs_ok

__all__ = [
    "lark_accepts",
    "miditok_errors",
    "notes_of",
    "order_ok",
    "pruned_lark",
    "reference_accepts",
]


def lark_accepts(grammar: StructuredGrammar, tokens: Sequence[str]) -> bool:
    """The syntax oracle: lark's Earley parser on the derived grammar."""
    try:
        lark_parser(grammar.text).parse(" ".join(tokens))
    except LarkError:
        return False
    return True


def order_ok(grammar: StructuredGrammar, tokens: Sequence[str]) -> bool:
    """With remove_duplicated_notes: at one onset (notes joined by ``TimeShift_0.0.1``) each
    program's notes come together and once, pitches strictly ascending
    (:func:`tests.reference.runs_ok`; every other TimeShift starts a new onset)."""
    if not grammar.remove_duplicated_notes:
        return True
    joined = ["Join" if t == "TimeShift_0.0.1" else t for t in tokens]  # not a new onset
    return runs_ok(joined, ("TimeShift",), ("Program",) if grammar.use_programs else ())


def reference_accepts(grammar: StructuredGrammar, tokens: Sequence[str]) -> bool:
    """Lark accepts the syntax and the plain-Python note order passes."""
    return lark_accepts(grammar, tokens) and order_ok(grammar, tokens)


def notes_of(tokens: Sequence[str], ticks_per_beat: int) -> list[tuple[int, int, int]]:
    """(program, onset tick, pitch) of every note, read off the tokens by hand: each
    TimeShift ``a.b.c`` moves time by a + b/c beats (``0.0.1``: not at all) and a Program
    token sets the program of the notes after it (0 without programs)."""
    tick = 0
    program = 0
    out = []
    for tok in tokens:
        kind, _, value = tok.partition("_")
        if kind == "TimeShift" and value != "0.0.1":
            a, b, c = (int(x) for x in value.split("."))
            tick += a * ticks_per_beat + b * ticks_per_beat // c
        elif kind == "Program":
            program = int(value)
        elif kind in ("Pitch", "PitchDrum"):
            out.append((program, tick, int(value)))
    return out
