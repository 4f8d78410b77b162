"""Oracles for TSD independent of the automaton: lark on the derived grammar, plain-Python
references of every constraint, and miditok's own ``tokens_errors`` (``tests.reference``).

The time reference follows miditok itself, not gramophone's tables: it runs miditok's
decoder clock in ticks (``_tpb_tokens_to_ticks``, ``_tpb_rests_to_ticks``, ``_tpb_per_ts``,
bar lengths from ``miditok.utils.compute_ticks_per_bar``) and, for every run of time
tokens, asks miditok's encoder routine (``_time_ticks_to_tokens``, ``_min_rest``) how it
would have written that gap, as ``TSD._add_time_events`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lark.exceptions import LarkError

from gramophone.grammar.tsd import TsdGrammar
from tests.reference import drums_ok, lark_parser, runs_ok

_SPECIALS = ("BOS", "EOS", "PAD", "MASK")
#: Token types after which miditok's decoder sets the previous note end to at least now.
_EVENTS = ("Program", "Tempo", "TimeSig", "Pedal", "PedalOff", "PitchBend", "Chord")


def lark_accepts(grammar: TsdGrammar, tokens: Sequence[str]) -> bool:
    """The syntax oracle: lark's own parser on the derived grammar."""
    try:
        lark_parser(grammar.text).parse(" ".join(tokens))
    except LarkError:
        return False
    return True


def _encoder_gap(tokenizer: Any, start: int, note_end: int, end: int, tpb: int) -> list[str]:
    """The time tokens miditok's TSD encoder writes to go from ``start`` to an event at
    ``end`` when the latest note ends at ``note_end`` (``TSD._add_time_events``)."""
    out: list[str] = []
    previous = start
    if tokenizer.config.use_rests and end - note_end >= tokenizer._min_rest(tpb):
        previous = max(note_end, previous)
        values, ticks = tokenizer._time_ticks_to_tokens(end - previous, tpb, rest=True)
        out += ["Rest_" + ".".join(map(str, v)) for v in values]
        previous += sum(ticks)
    if end != previous:
        values, _ = tokenizer._time_ticks_to_tokens(end - previous, tpb)
        out += ["TimeShift_" + ".".join(map(str, v)) for v in values]
    return out


def time_ok(tokenizer: Any, tokens: Sequence[str]) -> bool:
    """Time as miditok encodes it.

    - With time signatures the stream opens with one (miditok writes one at tick 0);
      every later TimeSig is at a bar line of the meter in force and changes it (miditok
      delays changes to the next bar and drops repeated ones).
    - Each maximal run of Rest/TimeShift tokens is exactly what miditok's encoder writes
      for the gap it spans: Rests from the latest note end when the gap past it reaches
      the smallest rest, greedy values, TimeShifts for the remainder.

    The latest note end is miditok's decoder's (notes' ends, and the time of Program,
    Tempo, TimeSig, Pedal, PedalOff, PitchBend and Chord tokens), rounded up to the next
    position of the meter in force when a change to a coarser meter left it between two
    positions: miditok's encoder then drops the sub-position remainder of the gap (its
    ``_time_ticks_to_tokens`` stops below the smallest value), so its rests start there.
    """
    from miditok.utils import compute_ticks_per_bar
    from symusic import TimeSignature

    cfg = tokenizer.config
    ppb = int(cfg.max_num_pos_per_beat)
    body = [t for t in tokens if t.partition("_")[0] not in _SPECIALS]
    if cfg.use_time_signatures and (not body or not body[0].startswith("TimeSig_")):
        return False
    tpb = int(tokenizer.time_division)  # the decoder's ticks per beat before any TimeSig
    tick = 0
    note_end = 0
    origin = 0  # tick of the latest TimeSig (a bar line)
    meter: tuple[int, int] | None = None
    i = 0
    while i < len(body):
        kind, _, value = body[i].partition("_")
        if kind in ("TimeShift", "Rest"):
            j = i
            while j < len(body) and body[j].partition("_")[0] in ("TimeShift", "Rest"):
                j += 1
            grid = tpb // ppb
            rounded = origin + -(-(note_end - origin) // grid) * grid
            start = tick
            for tok in body[i:j]:
                k, _, v = tok.partition("_")
                if k == "TimeShift":
                    tick += tokenizer._tpb_tokens_to_ticks[tpb][v]
                else:
                    tick = max(rounded, tick) + tokenizer._tpb_rests_to_ticks[tpb][v]
            if _encoder_gap(tokenizer, start, rounded, tick, tpb) != list(body[i:j]):
                return False
            i = j
            continue
        if kind == "TimeSig":
            n, d = (int(x) for x in value.split("/"))
            if meter is not None:
                bar = compute_ticks_per_bar(TimeSignature(0, *meter), tokenizer.time_division)
                if (n, d) == meter or (tick - origin) % bar != 0:
                    return False
            meter, origin = (n, d), tick
            tpb = tokenizer._tpb_per_ts[d]
        if kind in _EVENTS:
            note_end = max(note_end, tick)
        elif kind in ("Pitch", "PitchDrum"):
            offset = 2 if cfg.use_velocities else 1
            if i + offset < len(body) and body[i + offset].startswith("Duration_"):
                duration = body[i + offset].partition("_")[2]
                note_end = max(note_end, tick + tokenizer._tpb_tokens_to_ticks[tpb][duration])
        i += 1
    return True


def order_ok(tokenizer: Any, tokens: Sequence[str]) -> bool:
    """With remove_duplicated_notes: the notes of one time (between TimeShift/Rest tokens)
    as miditok writes them (:func:`tests.reference.runs_ok`: each program's run together and
    once, pitches strictly ascending in it); a program's Chord and PitchBend come before the
    first note of its run."""
    cfg = tokenizer.config
    if not cfg.remove_duplicated_notes:
        return True
    runs = ("Program", "Pedal", "PedalOff") if cfg.use_programs else ()
    return runs_ok(tokens, ("TimeShift", "Rest"), runs, ("Chord", "PitchBend"))


def reference_accepts(grammar: TsdGrammar, tokenizer: Any, tokens: Sequence[str]) -> bool:
    """Lark accepts the syntax and every plain-Python constraint passes."""
    cfg = tokenizer.config
    return (
        lark_accepts(grammar, tokens)
        and time_ok(tokenizer, tokens)
        and order_ok(tokenizer, tokens)
        and drums_ok(tokens, cfg.use_programs and cfg.use_pitchdrum_tokens)
    )
