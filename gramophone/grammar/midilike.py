"""The MIDILike grammar derived from a miditok tokenizer config (miditok 3.1.0's ``MIDILike``).

The shipped grammar file (``grammars/midilike.lark``) describes the richest MIDILike language
gramophone supports; :func:`derive` narrows it to one config and refuses, with a clear
:class:`~gramophone.UnsupportedConfigError`, every option it does not cover. The constraint
automata EBNF cannot state are built here (:meth:`MidiLikeGrammar.components`). The
motivating bug (miditok issue #208): a model wrote a NoteOn without its Velocity and
decoding crashed; here a NoteOn can only be followed by its Velocity, every NoteOff closes
an open note and every note is closed by the end.

**What miditok's ``tokens_errors`` checks for MIDILike** (``MIDILike._tokens_errors``):

1. each token's type against the previous token's (``tokens_types_graph``; the first token
   is not checked);
2. NoteOn/DrumOn: with ``remove_duplicated_notes``, a (program, pitch) struck twice between
   two time moves (TimeShift, Rest);
3. NoteOff/DrumOff: no open note of (current program, pitch) to close; with
   ``additional_params["max_duration"]``, a note (paired first in, first out) longer than it;
4. notes still open at the end of the stream.

The current program is the last Program token's (0 before any); NoteOn and DrumOn (NoteOff
and DrumOff) open (close) the same notes, keyed by (program, pitch). Nothing else is
checked: a stream may start with a Velocity, end on a Program token, leave a pedal down.
The decoder pairs notes first in, first out; it drops notes never closed (with
``max_duration`` it gives them that duration, and cuts longer notes to it). The encoder never
clips a note to ``max_duration``: with it, miditok's own output can fail check 3.

**What gramophone checks.** The grammar file holds (1), narrowed where the graph allows what
miditok's encoder never writes (the file lists each narrowing). The constraints below hold
(3) and (4) exactly, under one bound, and (2).

- *Bound.* At most ``max_open_per_pitch`` (``C``, default 4) notes of one (program, pitch)
  are open at once: a NoteOn beyond that is rejected. miditok allows any number. Why 4:
  measured on 163 streams of real music (music21's corpus: Mozart, Haydn, Beethoven,
  Schumann, Monteverdi, Palestrina, Josquin, ...), ``C = 1`` rejected 75 of them (two
  voices of one part on one pitch, a note struck again while it is held), ``C = 2`` 7,
  ``C = 3`` none; the most notes of one pitch sounding at once in one track of 83 works
  (those and the test suite's) are 1 in 40 of them, 2 in 34, 3 in 8 and 4 in one (Clara
  Schumann's trio op. 17); every Bach chorale fits ``C = 1``. With programs and 3 or 4 of them,
  the counter below also caps the open notes of one program (16 and 7); nothing else is
  bounded. Pitches are those of the config's
  pitch range (drum pitches must lie inside it); with ``max_duration`` refused, the
  length of a note is not bounded.
- *Pairing: safety components.* Each key (program, pitch) has a count ``0..C``. The
  pitches are split into balanced groups of ``g`` consecutive pitches; one component per
  group and program holds the group's counts in mixed radix (``(C + 1) ** g`` states)
  and, with programs, a bit "the current program is this one", set by every Program token.
  A NoteOn of the group (in its program) on a full key and a NoteOff on a closed key are
  rejected; every state accepts. ``g`` is the largest that keeps a component within
  :data:`MAX_PAIRING_STATES` states. Default config (pitches 21..109, ``C = 4``): 23
  components, 20 of 5**4 and 3 of 5**3 states (with ``C = 1``: 9, of 2**10 and 2**9).
- *Liveness: one counter.* ``open-notes`` counts the open notes, accepts only when there
  are none, and allows EOS only then. Without programs it is one count ``0..N``, ``N`` the
  number of keys times ``C``, so it never binds before the per-key bound (default config:
  357 states); a one-track chord, which must be followed by a note-on, is only allowed below
  ``N``. With programs it holds a count per program and the current program: a Program
  token chooses which notes the next NoteOff may close, so the way to acceptance depends on
  the count of each program, not only on their sum. Its counts go up to
  :func:`liveness_capacity` (all keys for 1 or 2 programs; 16 and 7 open notes per program
  for 3 and 4, within :data:`MAX_LIVENESS_STATES`).
- *Distances depend on the grammar and the counter only.* Whenever the counter allows a
  NoteOff, an open key of the current program exists and its pairing component allows it
  (nothing else restricts NoteOffs); whenever it allows a NoteOn, a free key of the current
  program exists (its count is below the cap, at most the number of keys times ``C``). So
  every path of the product of the syntax and the counter is a path of the full product:
  the fewest tokens to acceptance from any reachable state are that small product's.
  The pairing (and onset-order) components are marked ``neutral``, so the decoder leaves
  them out of its distance table and stays exact. Default config: 1,429 reachable states
  (7 syntax x 357 counter); the tests check the claim on every reachable state of small configs, along
  long walks of large ones, and that the small product has no dead end.
- *Duplicated notes* (``remove_duplicated_notes``, one track only). With ``C = 1`` nothing
  is added: at one onset a note-on follows only note-ons (the graph), so a second note-on
  of a pitch there finds its key still open and is rejected by the bound; this is exactly
  (2). With ``C > 1`` the ``onset-order`` component (last pitch struck at this onset:
  pitches + 1 states) requires note-ons at one onset in strictly ascending pitch, the order
  in which miditok writes them (it sorts notes by time then pitch when removing duplicates):
  stricter than (2), and never rejecting what miditok writes.
- *Drums* (programs with ``use_pitchdrum_tokens``): the ``drum-pitch`` component
  (:func:`~gramophone.grammar.constraints.drum_pitch_component`) allows DrumOn/DrumOff only
  under ``Program_-1`` and NoteOn/NoteOff only under the other programs, as miditok writes
  them (``tokens_errors`` does not check it). Under ``Program_-1`` the open keys are then
  drum pitches, so a DrumOff of an open key exists wherever the counter allows a note-off.

Reachable product of the default config: too large to tabulate (each of the 5**89 ways to
hold the keys is reachable); 25 components (syntax 7 states, open-notes 357, pairing 23 x <=
625).

**Refused** (named in the error): ``max_duration`` (the age of every open note would have
to be tracked), programs with ``remove_duplicated_notes`` (an exact, dead-end free check of
duplicates across programs needs per-program state: the canonical order REMI uses would
forbid closing a note of a lower program after a higher program's note-on at one onset,
and then the decoder's distances would no longer be exact), more than
:data:`MAX_PROGRAMS` programs (the pairing takes 23 components per program), programs in
several streams, program changes, key signatures, control changes, pitch intervals, pedal
durations, attribute controls, notes without NoteOff (``use_note_duration_programs`` not
covering every program), drum pitches outside the pitch range (``tokens_errors`` raises a
``KeyError`` on them) and, without programs, a ``programs`` list without 0 (the program
miditok's decoder and ``tokens_errors`` then use).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gramophone.errors import UnsupportedConfigError
from gramophone.grammar.automaton import Component
from gramophone.grammar.constraints import drum_pitch_component
from gramophone.grammar.fsa import REJECT
from gramophone.grammar.schemes import (
    absent_terminals,
    event_options,
    grammar_file_text,
    refuse_common_options,
)

if TYPE_CHECKING:
    from miditok import MusicTokenizer

__all__ = [
    "MAX_LIVENESS_STATES",
    "MAX_OPEN_PER_PITCH",
    "MAX_PAIRING_STATES",
    "MAX_PROGRAMS",
    "MidiLikeGrammar",
    "derive",
    "liveness_capacity",
    "onset_order_component",
    "open_notes_component",
    "pairing_components",
]

#: Default bound on the notes of one (program, pitch) open at once.
MAX_OPEN_PER_PITCH = 4
#: Most states of one pairing component (its pitches are grouped to stay within it).
MAX_PAIRING_STATES = 2048
#: Most programs with ``use_programs`` (each costs 23 pairing components of up to 2048 states).
MAX_PROGRAMS = 4
#: Most states of the ``open-notes`` counter (it caps the open notes per program to stay
#: within it when there are 3 or more programs).
MAX_LIVENESS_STATES = 16384

#: Options (and the value that is supported) checked by :func:`derive`.
_NOTE_ON = ("NoteOn", "DrumOn")
_NOTE_OFF = ("NoteOff", "DrumOff")
_TIME_MOVES = ("TimeShift", "Rest")

#: Rules that take their one-track form without programs (see the grammar file).
_ONE_TRACK_RULES = (
    "%override program:",
    "%override run: bend?",
    "%override run1: bend",
    "%override run_x: bend?",
    "%override run_x1: bend",
    "%override run_n: bend? chord? note_on+",
    "%override body_x1_nf: round round* pedals? run_x | pedals run_x | run_x1",
    "%override body_n_nf: (round round*)? pedals? run_n",
)


def _split(token: str) -> tuple[str, str]:
    kind, _, value = token.partition("_")
    return kind, value


@dataclass(frozen=True)
class MidiLikeGrammar:
    """A MIDILike grammar narrowed to one config: lark text plus the constraints' parameters.

    ``pitches``: the pitches of the pairing keys (the config's pitch range); ``programs``:
    the programs with keys of their own (empty without programs: one implicit program);
    ``onset_order``: note-ons at one onset in ascending pitch (``remove_duplicated_notes``
    with ``max_open_per_pitch > 1``).
    """

    text: str
    absent_terminals: tuple[str, ...]
    pitches: tuple[int, ...]
    programs: tuple[int, ...]
    max_open_per_pitch: int
    max_open_per_program: int
    onset_order: bool
    drum_pitches: bool = False  # programs and DrumOn/DrumOff tokens: drums under Program_-1 only
    scheme: str = "midilike"

    def components(self, vocab: Sequence[str]) -> list[Component]:
        """The open-notes counter, the pairing components, drum-pitch (programs and drum
        tokens) and the onset order if needed."""
        out = [
            open_notes_component(
                vocab,
                capacity=self.max_open_per_program,
                programs=self.programs,
                chord_needs_free_key=not self.programs,
            )
        ]
        out += pairing_components(vocab, self.pitches, self.programs, self.max_open_per_pitch)
        if self.drum_pitches:
            out.append(drum_pitch_component(vocab))
        if self.onset_order:
            out.append(onset_order_component(vocab, self.pitches))
        return out


def open_notes_component(
    vocab: Sequence[str], capacity: int, programs: Sequence[int] = (), chord_needs_free_key: bool = False
) -> Component:
    """The open notes, counted: the liveness constraint (accepting only when none is open).

    Without ``programs``: one count ``0..capacity``. With ``programs``: a count ``0..capacity``
    per program and the current program (the last Program token's), in mixed radix
    (program counts first, least significant; the current program's index on top). A
    NoteOn/DrumOn adds one to the current program's count (rejected at ``capacity``), a
    NoteOff/DrumOff removes one (rejected at 0); EOS is only allowed when every count is 0.
    With ``chord_needs_free_key`` (one track: a chord is followed by a note-on) a Chord is
    rejected at ``capacity``.

    Before any Program token the current program is :func:`_initial_program`.
    """
    radix = capacity + 1
    P = max(1, len(programs))
    base = radix**P
    S = base * P
    s = np.arange(S, dtype=np.int64)
    cur = s // base
    weight = radix**cur
    n = (s // weight) % radix  # the current program's count
    all_closed = s % base == 0
    T = np.tile(s.astype(np.int32)[:, None], (1, len(vocab)))
    index = {p: i for i, p in enumerate(programs)}
    for v, tok in enumerate(vocab):
        kind, value = _split(tok)
        if kind in _NOTE_ON:
            T[:, v] = np.where(n < capacity, s + weight, REJECT)
        elif kind in _NOTE_OFF:
            T[:, v] = np.where(n > 0, s - weight, REJECT)
        elif kind == "Program" and programs:
            T[:, v] = s % base + base * index[int(value)]
        elif kind == "Chord" and chord_needs_free_key:
            T[:, v] = np.where(n < capacity, s, REJECT)
        elif tok == "EOS_None":
            T[:, v] = np.where(all_closed, s, REJECT)
    start = base * index[_initial_program(programs)] if programs else 0
    info = {
        "open": np.array([sum((int(x) // radix**i) % radix for i in range(P)) for x in s % base]),
        "current_open": n.astype(np.int32),  # the current program's open notes
        "capacity": np.array([capacity], dtype=np.int32),
    }
    return Component(name="open-notes", transitions=T, accepting=all_closed, start=start, info=info)


def _initial_program(programs: Sequence[int]) -> int:
    """The current program before any Program token: 0, as in miditok, or the first of
    ``programs`` if 0 is not one of them (only the grammar's Program-led notes reach it)."""
    return 0 if 0 in programs else programs[0]


def liveness_capacity(n_keys_per_program: int, programs: int) -> int:
    """The most open notes per program the ``open-notes`` counter holds: every key full
    (never binding) unless ``(capacity + 1) ** programs * programs`` would exceed
    :data:`MAX_LIVENESS_STATES`."""
    if programs <= 1:
        return n_keys_per_program
    capacity = n_keys_per_program
    while (capacity + 1) ** programs * programs > MAX_LIVENESS_STATES:
        capacity -= 1
    return capacity


def _groups(n_pitches: int, radix: int, flag_states: int) -> list[tuple[int, int]]:
    """Balanced ``[lo, hi)`` index ranges of pitches, each within :data:`MAX_PAIRING_STATES`."""
    g = 1
    while radix ** (g + 1) * flag_states <= MAX_PAIRING_STATES:
        g += 1
    n_groups = math.ceil(n_pitches / g)
    bounds = np.linspace(0, n_pitches, n_groups + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def pairing_components(
    vocab: Sequence[str], pitches: Sequence[int], programs: Sequence[int], max_open: int
) -> list[Component]:
    """Open notes per (program, pitch), a group of pitches of one program per component.

    State: the counts ``0..max_open`` of the group's pitches in mixed radix (first pitch
    least significant) plus, with ``programs``, a top digit: 1 if the current program (the
    last Program token's; :func:`_initial_program` before any) is this component's. All
    states accept: these components only forbid (a NoteOn on a full key, a NoteOff on a
    closed one), and are ``neutral``: they never lengthen the shortest ending.
    """
    radix = max_open + 1
    flag_states = 2 if programs else 1
    index = {p: i for i, p in enumerate(pitches)}
    kinds = [_split(tok) for tok in vocab]
    out = []
    for program in programs or (None,):
        for lo, hi in _groups(len(pitches), radix, flag_states):
            g = hi - lo
            base = radix**g
            S = base * flag_states
            s = np.arange(S, dtype=np.int64)
            counts = s % base
            flag = s // base
            mine = flag == 1 if programs else np.ones(S, dtype=bool)
            T = np.tile(s.astype(np.int32)[:, None], (1, len(vocab)))
            for v, (kind, value) in enumerate(kinds):
                if kind in _NOTE_ON or kind in _NOTE_OFF:
                    i = index.get(int(value), -1) - lo
                    if not 0 <= i < g:
                        continue
                    digit = (counts // radix**i) % radix
                    if kind in _NOTE_ON:
                        col = np.where(digit < max_open, s + radix**i, REJECT)
                    else:
                        col = np.where(digit > 0, s - radix**i, REJECT)
                    T[:, v] = np.where(mine, col, s)
                elif kind == "Program" and programs:
                    T[:, v] = counts + base * int(int(value) == program)
            start = base * int(program == _initial_program(programs)) if programs else 0
            where = f"{pitches[lo]}-{pitches[hi - 1]}"
            name = f"pairing[{where}]" if program is None else f"pairing[program {program}: {where}]"
            out.append(
                Component(
                    name=name,
                    transitions=T,
                    accepting=np.ones(S, dtype=bool),
                    start=start,
                    info={
                        "pitches": np.asarray(pitches[lo:hi], dtype=np.int32),
                        "max_open": np.array([max_open], dtype=np.int32),
                    },
                    neutral=True,  # see the module notes: distances are the counter's
                )
            )
    return out


def onset_order_component(vocab: Sequence[str], pitches: Sequence[int]) -> Component:
    """Note-ons at one onset in strictly ascending pitch (one track).

    State: the index of the last pitch struck at this onset (0: none); a time move
    (TimeShift, Rest) starts a new onset.
    """
    index = {p: i + 1 for i, p in enumerate(pitches)}
    S = len(pitches) + 1
    last = np.arange(S, dtype=np.int32)
    T = np.tile(last[:, None], (1, len(vocab)))
    for v, tok in enumerate(vocab):
        kind, value = _split(tok)
        if kind in _TIME_MOVES:
            T[:, v] = 0
        elif kind in _NOTE_ON:
            i = index[int(value)]
            T[:, v] = np.where(last < i, i, REJECT)
    return Component(
        name="onset-order",
        transitions=T,
        accepting=np.ones(S, dtype=bool),
        start=0,
        info={"last_pitch": np.array([-1, *pitches], dtype=np.int32)},
        neutral=True,  # an ending never needs another note-on at this onset but after a chord
    )


def derive(tokenizer: MusicTokenizer, *, max_open_per_pitch: int = MAX_OPEN_PER_PITCH) -> MidiLikeGrammar:
    """Narrow the MIDILike grammar to ``tokenizer``'s config (or refuse the config).

    ``max_open_per_pitch``: the most notes of one (program, pitch) open at once (see the
    module notes; it sizes the pairing components).
    """
    from miditok import MIDILike

    if not isinstance(tokenizer, MIDILike):
        raise UnsupportedConfigError(
            f"tokenizer {type(tokenizer).__name__} is not supported: this grammar is for MIDILike"
        )
    if max_open_per_pitch < 1:
        raise ValueError("max_open_per_pitch must be at least 1")
    cfg = tokenizer.config
    refuse_common_options(cfg, note_ends="NoteOff tokens")
    if cfg.use_programs and cfg.remove_duplicated_notes:
        raise UnsupportedConfigError(
            "remove_duplicated_notes=True with use_programs=True is not supported for MIDILike: "
            "an exact check of duplicated notes across programs needs per-program state"
        )
    params = cfg.additional_params
    if params.get("max_duration") is not None:
        raise UnsupportedConfigError(
            "tokenizer option max_duration is not supported for MIDILike "
            "(checking note lengths would need the age of every open note)"
        )
    if cfg.use_programs and len(cfg.programs) > MAX_PROGRAMS:
        raise UnsupportedConfigError(
            f"programs: {len(cfg.programs)} programs with use_programs are not supported for MIDILike "
            f"(at most {MAX_PROGRAMS}: NoteOn/NoteOff pairing takes about 23 automaton components "
            "per program); list the programs you use in the config's programs"
        )
    if not cfg.use_programs and 0 not in cfg.programs:
        raise UnsupportedConfigError(
            "programs must include 0 when use_programs=False (miditok's MIDILike decoder and "
            "tokens_errors use program 0 for a stream without Program tokens)"
        )
    lo, hi = (int(x) for x in cfg.pitch_range)
    if cfg.use_pitchdrum_tokens:
        dlo, dhi = (int(x) for x in cfg.drums_pitch_range)
        if not lo <= dlo <= dhi <= hi:
            raise UnsupportedConfigError(
                f"drums_pitch_range {(dlo, dhi)} must lie within pitch_range {(lo, hi)} for MIDILike "
                "(miditok pairs DrumOn/DrumOff with NoteOn/NoteOff by pitch; tokens_errors fails "
                "on drum pitches outside the pitch range)"
            )

    absent = absent_terminals(cfg, event_options(cfg))
    overrides: list[str] = []
    if not cfg.use_velocities:
        overrides.append("%override velocity:")
    if not cfg.use_programs:
        overrides += _ONE_TRACK_RULES
    text = grammar_file_text("midilike")
    if overrides:
        text += "\n// Derived from the tokenizer config:\n" + "\n".join(overrides) + "\n"

    programs = tuple(sorted(int(p) for p in cfg.programs)) if cfg.use_programs else ()
    pitches = tuple(range(lo, hi + 1))
    return MidiLikeGrammar(
        text=text,
        absent_terminals=tuple(sorted(absent)),
        pitches=pitches,
        programs=programs,
        max_open_per_pitch=int(max_open_per_pitch),
        max_open_per_program=liveness_capacity(len(pitches) * max_open_per_pitch, len(programs)),
        onset_order=bool(cfg.remove_duplicated_notes) and max_open_per_pitch > 1,
        drum_pitches=bool(cfg.use_programs and cfg.use_pitchdrum_tokens),
    )
