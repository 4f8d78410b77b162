"""Oracles independent of the automaton: lark on the derived grammar, plain-Python
references of every constraint, and miditok's own ``tokens_errors``.

The plain-Python reference re-implements miditok's REMI decoder's notion of time (bars,
time signatures, positions, rests starting at the end of the latest note, all in miditok's
ticks) directly on token names, without any automaton table.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from lark import Lark
from lark.exceptions import LarkError

from gramophone.grammar.remi import RemiGrammar


@lru_cache(maxsize=32)
def lark_parser(text: str) -> Lark:
    return Lark(text, parser="earley", lexer="basic")


def lark_accepts(grammar: RemiGrammar, tokens: Sequence[str]) -> bool:
    """The syntax oracle: lark's own parser on the derived grammar."""
    try:
        lark_parser(grammar.text).parse(" ".join(tokens))
    except LarkError:
        return False
    return True


@dataclass(frozen=True)
class MiditokClock:
    """miditok's REMI decoder's units: ticks per quarter (``time_division``), ticks per beat
    of each time signature denominator (``_tpb_per_ts``), and the ticks of a Rest or
    Duration value at a number of ticks per beat (``_tpb_rests_to_ticks`` ...)."""

    ticks_per_quarter: int
    ticks_per_beat: dict[int, int]
    rest_ticks: Callable[[str, int], int]
    duration_ticks: Callable[[str, int], int]

    @classmethod
    def of(cls, tokenizer: Any) -> MiditokClock:
        """The tokenizer's own tables."""
        return cls(
            int(tokenizer.time_division),
            {int(d): int(t) for d, t in tokenizer._tpb_per_ts.items()},
            lambda value, tpb: int(tokenizer._tpb_rests_to_ticks[tpb][value]),
            lambda value, tpb: int(tokenizer._tpb_tokens_to_ticks[tpb][value]),
        )

    @classmethod
    def rebuilt(cls, grammar: RemiGrammar) -> MiditokClock:
        """Without the tokenizer: miditok's formulas (``__create_tpb_per_ts``: positions per
        beat times the largest denominator over the denominator; ``_time_token_to_ticks``)
        over the config's time signatures."""
        from miditok import MusicTokenizer

        model = grammar.time
        sigs = model.time_signatures or (model.default_time_signature,)
        largest = max(d for _, d in sigs)
        ppb = model.positions_per_beat
        tpb = {d: ppb * (largest // d) for d in {*(d for _, d in sigs), model.default_time_signature[1]}}
        ticks = MusicTokenizer._time_token_to_ticks
        return cls(tpb[model.default_time_signature[1]], tpb, ticks, ticks)


def time_ok(grammar: RemiGrammar, tokens: Sequence[str], tokenizer: Any = None) -> bool:
    """The time of miditok's REMI decoder (``REMI._tokens_to_score``), in its ticks
    (``tokenizer``'s tables, else rebuilt from the config), plus what gramophone asks of it:
    positions strictly increase in a bar and stay below its length; a Position after rests
    is not before the rests' end; a time signature only at a bar start; with time signatures
    a stream does not open on a rest.

    Rests advance from the later of the current time and the latest note end, by ticks of
    the meter in force, and move the bar by the whole bars they pass (no Bar token): a note
    held over a change of meter ends where it ends (its ticks do not change with the meter)."""
    from miditok.utils import compute_ticks_per_bar
    from symusic import TimeSignature

    model = grammar.time
    clock = MiditokClock.of(tokenizer) if tokenizer is not None else MiditokClock.rebuilt(grammar)
    ppb = model.positions_per_beat
    sig = model.default_time_signature
    ticks_per_bar = compute_ticks_per_bar(TimeSignature(0, *sig), clock.ticks_per_quarter)
    ticks_per_beat = clock.ticks_per_beat[sig[1]]
    ticks_per_pos = ticks_per_beat // ppb
    # miditok's decoder's variables
    current_tick = tick_at_last_ts_change = tick_at_current_bar = 0
    current_bar = -1
    bar_at_last_ts_change = 0
    previous_note_end = 0
    # gramophone's
    started = False
    positioned = False  # a Position since the start of this bar
    min_next = 0  # the tick the next Position must reach
    for tok in tokens:
        kind, _, value = tok.partition("_")
        if kind in ("BOS", "EOS", "PAD"):
            continue
        if kind == "Bar":
            current_bar += 1
            if current_bar > 0:
                current_tick = tick_at_current_bar + ticks_per_bar
            tick_at_current_bar = current_tick
            started, positioned, min_next = True, False, current_tick
        elif kind == "TimeSig":
            if positioned or current_tick != tick_at_current_bar:
                return False
            n, d = (int(x) for x in value.split("/"))
            if (n, d) != sig:
                sig = (n, d)
                tick_at_last_ts_change = tick_at_current_bar
                bar_at_last_ts_change = current_bar
                ticks_per_bar = compute_ticks_per_bar(TimeSignature(0, n, d), clock.ticks_per_quarter)
                ticks_per_beat = clock.ticks_per_beat[d]
                ticks_per_pos = ticks_per_beat // ppb
        elif kind == "Rest":
            if not started and model.use_time_signatures:
                return False
            started = True
            current_tick = max(previous_note_end, current_tick) + clock.rest_ticks(value, ticks_per_beat)
            passed = (current_tick - tick_at_last_ts_change) // ticks_per_bar
            real_current_bar = bar_at_last_ts_change + passed
            if real_current_bar > current_bar:
                if current_bar == -1:
                    current_bar = 0
                tick_at_current_bar += (real_current_bar - current_bar) * ticks_per_bar
                current_bar = real_current_bar
                positioned = False
            min_next = current_tick
        elif kind == "Position":
            if not started:
                return False
            if current_bar == -1:
                current_bar = 0
            q = int(value)
            tick = tick_at_current_bar + q * ticks_per_pos
            if q * ticks_per_pos >= ticks_per_bar or tick < min_next:
                return False
            current_tick = tick
            positioned, min_next = True, tick + 1
        elif kind == "Duration" and model.use_rests:
            end = current_tick + clock.duration_ticks(value, ticks_per_beat)
            previous_note_end = max(previous_note_end, end)
        elif kind == "Tempo":
            previous_note_end = max(previous_note_end, current_tick)
    return True


def runs_ok(
    tokens: Sequence[str],
    onset_kinds: Sequence[str],
    run_kinds: Sequence[str],
    first_kinds: Sequence[str] = ("Chord",),
) -> bool:
    """The notes of one onset as miditok's encoder writes them with remove_duplicated_notes
    and programs in one stream: it merges the tracks of one program
    (``merge_same_program_tracks``), sorts each track's notes by time then pitch and removes
    duplicates (``_preprocess_notes``), then sorts the events of all tracks by time only,
    stably (``_score_to_tokens``). So at one onset (between ``onset_kinds`` tokens) each
    program's events (its ``run_kinds`` tokens, and what follows them) come together and
    once, in the order of the tracks, whatever their programs; pitches strictly ascend within
    a program's run; ``first_kinds`` (a Chord; in TSD a PitchBend too) only before the first
    note of its run. Without programs the whole onset is one run."""
    program: int | None = None
    last: int | None = None
    done: set[int] = set()
    for tok in tokens:
        kind, _, value = tok.partition("_")
        if kind in onset_kinds:
            program, last, done = None, None, set()
        elif kind in ("Pitch", "PitchDrum"):
            if last is not None and int(value) <= last:
                return False
            last = int(value)
        elif kind in first_kinds and last is not None:
            return False
        elif kind in run_kinds and int(value) != program:
            if int(value) in done:
                return False
            program, last = int(value), None
            done.add(program)
    return True


def order_ok(grammar: RemiGrammar, tokens: Sequence[str]) -> bool:
    """With remove_duplicated_notes: the notes of one onset as miditok writes them
    (:func:`runs_ok`; Pedal and PedalOff tokens name their program too)."""
    if not grammar.remove_duplicated_notes:
        return True
    runs = ("Program", "Pedal", "PedalOff") if grammar.use_programs else ()
    return runs_ok(tokens, ("Position", "Bar", "Rest"), runs)


def drums_ok(tokens: Sequence[str], drum_pitches: bool) -> bool:
    """``drum_pitches`` (programs and ``use_pitchdrum_tokens``): miditok's encoder
    (``_create_track_events``) writes each note after its Program token, a drum track's
    (program -1) as PitchDrum (REMI, TSD, Structured) or DrumOn/DrumOff (MIDILike), every
    other track's as Pitch or NoteOn/NoteOff, and detects chords only on tracks that are not
    drums."""
    if not drum_pitches:
        return True
    program: int | None = None
    for tok in tokens:
        kind, _, value = tok.partition("_")
        if kind == "Program":
            program = int(value)
        elif program is not None:
            drum = kind in ("PitchDrum", "DrumOn", "DrumOff")
            melodic = kind in ("Pitch", "NoteOn", "NoteOff", "Chord")
            if (drum and program != -1) or (melodic and program == -1):
                return False
    return True


def reference_accepts(grammar: RemiGrammar, tokens: Sequence[str], tokenizer: Any = None) -> bool:
    """Lark accepts the syntax and every plain-Python constraint passes (time in
    ``tokenizer``'s ticks when given, else in miditok's, rebuilt from the config; the drum
    rule from ``tokenizer``'s config when given)."""
    if tokenizer is not None:
        drum_pitches = bool(tokenizer.config.use_programs and tokenizer.config.use_pitchdrum_tokens)
    else:
        drum_pitches = grammar.drum_pitches
    return (
        lark_accepts(grammar, tokens)
        and time_ok(grammar, tokens, tokenizer)
        and order_ok(grammar, tokens)
        and drums_ok(tokens, drum_pitches)
    )


def miditok_errors(tokenizer: object, ids: Sequence[int]) -> float:
    """miditok's ``tokens_errors`` on the stream without special tokens (its type graph
    lets nothing follow EOS, so PAD after EOS would count)."""
    from miditok import TokSequence

    specials = {tokenizer.vocab[t] for t in tokenizer.special_tokens}  # type: ignore[attr-defined]
    body = [int(i) for i in ids if int(i) not in specials]
    if not body:
        return 0.0
    seq = TokSequence(ids=copy.copy(body))
    return float(tokenizer.tokens_errors(seq))  # type: ignore[attr-defined]


def pruned_lark(text: str, absent: Sequence[str]) -> Lark:
    """The same language as ``text`` with every rule that needs an absent terminal removed,
    rebuilt from lark's own BNF expansion, for ``hypothesis.extra.lark.from_lark``: it can
    then draw streams without wasting draws on token types the config turns off."""
    from lark.grammar import NonTerminal, Terminal

    parser = Lark(text, parser="earley", lexer="basic")
    rules = list(parser.rules)
    dead_terms = set(absent)
    dead: set[str] = set()
    while True:
        alive_rules = [
            r
            for r in rules
            if not any(
                (isinstance(s, Terminal) and s.name in dead_terms)
                or (isinstance(s, NonTerminal) and s.name in dead)
                for s in r.expansion
            )
        ]
        origins = {r.origin.name for r in alive_rules}
        newly_dead = {r.origin.name for r in rules} - origins - dead
        rules = alive_rules
        if not newly_dead:
            break
        dead |= newly_dead
    names = {name: f"r{i}" for i, name in enumerate(sorted({str(r.origin.name) for r in rules}))}
    bodies: dict[str, list[str]] = {}
    for r in rules:
        body = " ".join(names[s.name] if isinstance(s, NonTerminal) else s.name for s in r.expansion)
        bodies.setdefault(names[r.origin.name], []).append(body)
    lines = [f"{origin}: {' | '.join(alts)}" for origin, alts in bodies.items()]
    used = {s.name for r in rules for s in r.expansion if isinstance(s, Terminal)}
    for term in parser.terminals:
        if term.name in used:
            flags = "".join(sorted(term.pattern.flags))
            rx = re.sub(r"(?<!\\)/", r"\/", term.pattern.to_regexp())
            lines.append(f"{term.name}: /{rx}/{flags}")
    lines.append('%ignore " "')
    return Lark("\n".join(lines), parser="earley", lexer="basic", start=names["start"])
