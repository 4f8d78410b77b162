"""Oracles for the MIDILike grammar that do not use the automaton: lark on the derived
grammar, plain-Python references of every constraint, miditok's own type graph.

The references are written from miditok 3.1.0's behaviour (``MIDILike._tokens_errors`` and
``MIDILike._tokens_to_score``), not from ``gramophone.grammar.midilike``: they read token
names, keep miditok's notion of the current program and its open-note queues, and know
only the two parameters gramophone adds (the bound on open notes of one pitch, and whether
note-ons at one onset must ascend).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from lark.exceptions import LarkError

from tests.reference import drums_ok, lark_parser

NOTE_ON = ("NoteOn", "DrumOn")
NOTE_OFF = ("NoteOff", "DrumOff")


def lark_accepts(text: str, tokens: Sequence[str]) -> bool:
    """The syntax oracle: lark's Earley parser on the derived grammar text."""
    try:
        lark_parser(text).parse(" ".join(tokens))
    except LarkError:
        return False
    return True


def pairing_ok(tokens: Sequence[str], max_open: int) -> bool:
    """miditok's pairing: the current program is the last Program token's (0 before any);
    NoteOn/DrumOn opens a note of (program, pitch), NoteOff/DrumOff closes the oldest open
    one, which must exist; nothing is open at the end. gramophone's bound: at most
    ``max_open`` notes of one (program, pitch) open at once."""
    program = 0
    open_notes: dict[tuple[int, int], int] = {}
    for tok in tokens:
        kind, _, value = tok.partition("_")
        if kind == "Program":
            program = int(value)
        elif kind in NOTE_ON:
            key = (program, int(value))
            open_notes[key] = open_notes.get(key, 0) + 1
            if open_notes[key] > max_open:
                return False
        elif kind in NOTE_OFF:
            key = (program, int(value))
            if open_notes.get(key, 0) == 0:
                return False
            open_notes[key] -= 1
    return not any(open_notes.values())


def duplicates_ok(tokens: Sequence[str], remove_duplicated_notes: bool, ascending: bool) -> bool:
    """With ``remove_duplicated_notes``, miditok's rule: no (program, pitch) struck twice
    between two time moves (TimeShift, Rest). With ``ascending`` (gramophone's canonical
    order, the order miditok's encoder writes after sorting notes by time then pitch):
    note-ons between two time moves in strictly ascending pitch."""
    if not remove_duplicated_notes:
        return True
    program = 0
    struck: set[tuple[int, int]] = set()
    last = -1
    for tok in tokens:
        kind, _, value = tok.partition("_")
        if kind in ("TimeShift", "Rest"):
            struck, last = set(), -1
        elif kind == "Program":
            program = int(value)
        elif kind in NOTE_ON:
            pitch = int(value)
            if (program, pitch) in struck or (ascending and pitch <= last):
                return False
            struck.add((program, pitch))
            last = pitch
    return True


def reference_accepts(
    text: str,
    tokens: Sequence[str],
    *,
    max_open: int,
    remove_duplicated_notes: bool,
    ascending: bool,
    drum_pitches: bool = False,
) -> bool:
    """Lark accepts the syntax and every plain-Python constraint passes (``drum_pitches``:
    programs with DrumOn/DrumOff tokens, :func:`tests.reference.drums_ok`)."""
    return (
        lark_accepts(text, tokens)
        and pairing_ok(tokens, max_open)
        and duplicates_ok(tokens, remove_duplicated_notes, ascending)
        and drums_ok(tokens, drum_pitches)
    )


def type_graph_errors(tokenizer: object, tokens: Sequence[str]) -> int:
    """Successions miditok's type graph (``tokens_types_graph``) forbids, special tokens
    left out: the first of ``tokens_errors``'s checks, alone."""
    graph = tokenizer.tokens_types_graph  # type: ignore[attr-defined]
    kinds = [t.partition("_")[0] for t in tokens if t.partition("_")[0] not in ("BOS", "EOS", "PAD", "MASK")]
    return sum(1 for a, b in itertools.pairwise(kinds) if b not in graph[a])
