"""The TSD grammar derived from a miditok tokenizer config (``miditok.TSD``).

TSD writes time as *TimeShift* tokens (from the current time) and, with ``use_rests``,
*Rest* tokens (from the end of the latest note); there are no bars and no positions. The
shipped grammar file (``grammars/tsd.lark``) describes the richest TSD language gramophone
supports; :func:`derive` narrows it to one config and refuses, with a clear
:class:`~gramophone.UnsupportedConfigError` naming the option, every option it does not
cover: key signatures, control changes, pitch intervals, program changes, pedal durations,
programs in one stream per track, attribute controls, notes without Duration tokens, and
time resolutions that are not whole positions or not listed in increasing order.

What miditok's ``tokens_errors`` checks for TSD, and what gramophone adds
-------------------------------------------------------------------------
``tokens_errors`` (``MusicTokenizer._tokens_errors``) checks

- each token's type against the previous token's type in ``TSD._create_token_types_graph``
  (the first token is not checked, nor is the end of the stream: a stream may stop in
  the middle of a note);
- with ``remove_duplicated_notes``, a pitch played twice by the current program (the last
  Program token) since the last TimeShift or Rest (Pitch and PitchDrum share values).

Its time checks look at Position tokens only, which TSD does not have: it checks nothing
about time. gramophone's automaton adds, besides a syntax that is a subset of that type
graph (notes are whole ``[Program] Pitch [Velocity] Duration`` groups, a stream ends after
a whole event and, with time signatures, opens with the time signature at tick 0):

- the **tsd-time** component (:func:`time_component`): a time signature only at a bar line
  of the meter in force (miditok delays every change to the next bar) and only where it
  changes the meter (miditok drops repeated ones). With rests, time advances as miditok's
  encoder writes a gap: a gap that reaches at least the smallest rest past the latest note
  end is written with Rest tokens starting at that note end, the TimeShift tokens that
  follow cover less than the smallest rest, and otherwise TimeShift tokens never go that
  far past the latest note end. Time is counted in positions (``1 / max_num_pos_per_beat``
  of the beat, the beat being the time signature's denominator, as in miditok), the note
  end in positions of the config's finest meter, so that it survives changes of meter
  exactly. A note end that falls between two positions of a coarser meter (an x/8 note
  sounding into x/4) starts the rests at the next position of that meter: miditok's
  encoder drops the sub-position remainder of such a gap, so that is the time its tokens
  describe (its decoder, which starts at the exact note end, lands one tick early).
- the **time-runs** component (:func:`time_runs_component`): each run of TimeShift (and of
  Rest) tokens is miditok's greedy decomposition of its gap
  (``MusicTokenizer._time_ticks_to_tokens``: largest value first), so every gap has one
  spelling: ``TimeShift_0.4.8 TimeShift_0.4.8`` is ``TimeShift_1.0.8``.
- with ``remove_duplicated_notes``, the **note-order** component
  (:func:`note_order_component`): at one time, pitches strictly ascend within a program's
  run, and a program's chord and pitch bends come before the first note of its run; with
  programs, the **program-runs** components
  (:func:`~gramophone.grammar.constraints.program_runs_components`): one run per program at
  one time, the runs in any order. This forbids duplicated notes; miditok writes this (it
  sorts a track's notes by time then pitch before removing duplicates, merges the tracks of
  one program, and sorts the events of all tracks by time only, stably: the runs come in
  the order of the score's tracks).
- with programs and ``use_pitchdrum_tokens``, the **drum-pitch** component
  (:func:`~gramophone.grammar.constraints.drum_pitch_component`): PitchDrum only under
  ``Program_-1``, Pitch and Chord only under the other programs (``tokens_errors`` does not
  check it).

Streams whose own time is inconsistent are rejected even when miditok wrote them: miditok
3.1 picks a score's tick resolution from its time signatures *before* it merges and drops
some of them (two at one tick, or one off a bar line that moves onto the next one); when
the dropped one had the largest denominator, x/4 sections are left on a grid finer than
their positions and TimeShifts drop the remainders: the stream's own time drifts (a later
TimeSig falls between bar lines; with programs, notes of two times can merge into one
time out of order).

Sustain pedals are not ordered by program (miditok writes them per track, and its own type
graph forbids some of the orders it writes: a Pedal of one track followed by a PedalOff of
a later one at the same time, or any track's pedal after an earlier track's notes; such
streams are flagged by ``tokens_errors`` and are outside this language too). Pedal on/off
alternation is not tracked. Without ``remove_duplicated_notes`` the notes of one time may
come in any order (miditok writes symusic's (time, duration, pitch) order).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from gramophone.errors import UnsupportedConfigError
from gramophone.grammar import fsa
from gramophone.grammar.automaton import Component
from gramophone.grammar.constraints import (
    beats_to_positions,
    drum_pitch_component,
    highest_pitch_index,
    program_runs_components,
)
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
    "TsdGrammar",
    "TsdTimeModel",
    "derive",
    "note_order_component",
    "time_component",
    "time_runs_component",
]

#: Options (and the value that is supported) checked by :func:`derive`.
_SPECIAL_KINDS = frozenset({"BOS", "EOS", "PAD", "MASK"})
#: Events after which miditok's previous note end is at least the current time.
_EVENT_KINDS = frozenset(
    {"Pitch", "PitchDrum", "Program", "Tempo", "Pedal", "PedalOff", "PitchBend", "Chord"}
)
#: The meter in force before any TimeSig token (miditok's default, 4/4).
_DEFAULT_TIME_SIGNATURE = (4, 4)


def _split(token: str) -> tuple[str, str]:
    kind, _, value = token.partition("_")
    return kind, value


@dataclass(frozen=True)
class TsdTimeModel:
    """What the time constraints need to know of a tokenizer config (time values are read
    from the vocabulary's Duration, TimeShift and Rest tokens)."""

    positions_per_beat: int
    time_signatures: tuple[tuple[int, int], ...]  # those a stream may use; () without TimeSig tokens
    use_rests: bool


@dataclass(frozen=True)
class TsdGrammar:
    """A TSD grammar narrowed to one config: lark text plus the constraints' parameters."""

    text: str
    absent_terminals: tuple[str, ...]
    time: TsdTimeModel
    remove_duplicated_notes: bool
    use_programs: bool
    drum_pitches: bool = False  # programs and PitchDrum tokens: drum pitches under Program_-1 only
    scheme: str = "tsd"

    def components(self, vocab: Sequence[str]) -> list[Component]:
        """tsd-time (when the config has time signatures or rests), time-runs, drum-pitch
        (programs and PitchDrum tokens) and, with ``remove_duplicated_notes``, note-order
        (and with programs, program-runs)."""
        out = []
        time = time_component(vocab, self.time)
        if time is not None:
            out.append(time)
        out.append(time_runs_component(vocab, self.time.positions_per_beat))
        if self.drum_pitches:
            out.append(drum_pitch_component(vocab))
        if self.remove_duplicated_notes:
            out.append(note_order_component(vocab, self.use_programs))
            if self.use_programs:
                out += program_runs_components(vocab, ("TimeShift", "Rest"))
        return out


# -- tsd-time -------------------------------------------------------------------------------
def time_component(vocab: Sequence[str], model: TsdTimeModel) -> Component | None:
    """Time signatures at bar lines; with rests, time advances as miditok writes a gap.

    State ``(ts, t, e)``: ``ts`` the meter in force; ``t`` the position in its bar (only
    tracked when the config has two time signatures or more: with one, a TimeSig token can
    only open the stream); with rests, ``e`` the latest note end minus the current time, in
    *ticks*: positions of the finest meter of the config (a 4/4 position is two ticks when
    the config has x/8 meters), so that a note end survives changes of meter exactly. A
    TimeShift may pass the note end by less than the smallest rest ``m`` (``1 - m <= e``,
    in ticks of the meter in force); rests start at the note end rounded up to a position
    of the meter in force. With time signatures there is one more state, the start, from
    which only a TimeSig token moves. ``None`` when the config has neither time signatures
    nor rests (nothing to check). States that cannot be reached are dropped.
    """
    has_ts = bool(model.time_signatures)
    if not has_ts and not model.use_rests:
        return None
    P = model.positions_per_beat
    sigs = list(model.time_signatures) if has_ts else [_DEFAULT_TIME_SIGNATURE]
    track_bars = len(sigs) > 1
    L = np.array([n * P if track_bars else 1 for n, _ in sigs], dtype=np.int64)
    den = np.array([d for _, d in sigs], dtype=np.int64)
    tick = den.max() // den  # ticks per position of each meter
    kinds = [_split(tok) for tok in vocab]

    def values(kind: str) -> list[int]:
        return [beats_to_positions(v, P) for k, v in kinds if k == kind]

    if model.use_rests:
        rests, durations = values("Rest"), values("Duration")
        e_lo = 1 - min(rests) * tick  # per meter
        E = max(durations) * int(tick.max())  # the longest note, started in the coarsest meter
    else:
        e_lo = np.zeros(len(sigs), dtype=np.int64)
        E = 0
    n_e = E - e_lo + 1
    sizes = L * n_e
    first = 1 if has_ts else 0  # state 0: the start, before the first TimeSig
    offsets = first + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    S = int(first + sizes.sum())
    ts_of = np.concatenate([np.full(int(n), j) for j, n in enumerate(sizes)])
    local = np.concatenate([np.arange(int(n)) for n in sizes])
    t_of = local // n_e[ts_of]
    e_of = local % n_e[ts_of] + e_lo[ts_of]
    L_of, tick_of = L[ts_of], tick[ts_of]
    rows = np.arange(first, S)

    def sid(ts: np.ndarray, t: np.ndarray, e: np.ndarray) -> np.ndarray:
        if (e > E).any() or (e < e_lo[ts]).any():
            raise AssertionError("tsd-time: a note end outside the tracked range")  # see E above
        return offsets[ts] + t * n_e[ts] + (e - e_lo[ts])

    ts_index = {f"{n}/{d}": j for j, (n, d) in enumerate(sigs)} if has_ts else {}
    e_clamped = np.maximum(e_of, 0)
    identity = np.arange(S, dtype=np.int64)

    def column(kind: str, value: str) -> np.ndarray:
        col = np.full(S, REJECT, dtype=np.int64)
        if kind in _SPECIAL_KINDS:
            return identity
        if kind == "Velocity":  # time-neutral, but (as every event) not before the first TimeSig
            col[first:] = rows
            return col
        if kind == "TimeSig":
            j = ts_index.get(value)
            if j is None:
                return col
            ok = (t_of == 0) & (ts_of != j)
            n = int(ok.sum())
            col[rows[ok]] = sid(np.full(n, j), np.zeros(n, np.int64), e_clamped[ok])
            if has_ts:
                col[0] = sid(np.array([j]), np.array([0]), np.array([0]))[0]
            return col
        if kind == "TimeShift":
            d = beats_to_positions(value, P)
            e_new = e_of - d * tick_of if model.use_rests else e_of
            ok = e_new >= e_lo[ts_of]
            col[rows[ok]] = sid(ts_of[ok], (t_of[ok] + d) % L_of[ok], e_new[ok])
            return col
        if kind == "Rest" and model.use_rests:
            start = t_of - (-e_clamped // tick_of)  # the note end, up to a position
            f = start + beats_to_positions(value, P)
            col[rows] = sid(ts_of, f % L_of, np.zeros_like(f))
            return col
        if kind == "Duration":
            d = beats_to_positions(value, P)
            e_new = np.maximum(e_of, d * tick_of) if model.use_rests else e_of
            col[rows] = sid(ts_of, t_of, e_new)
            return col
        if kind in _EVENT_KINDS:
            col[rows] = sid(ts_of, t_of, e_clamped)
            return col
        return col  # a token type this scheme does not know: never allowed

    # Tokens of one type and time value share a column: build each distinct column once.
    distinct: dict[tuple[str, str], int] = {}
    columns: list[np.ndarray] = []
    token_column = np.empty(len(vocab), dtype=np.int64)
    for v, (kind, value) in enumerate(kinds):
        key = (kind, value if kind in ("TimeSig", "TimeShift", "Rest", "Duration") else "")
        if key not in distinct:
            distinct[key] = len(columns)
            columns.append(column(kind, value))
        token_column[v] = distinct[key]
    table = np.stack(columns, axis=1)  # (S, distinct columns)
    start = 0 if has_ts else int(sid(np.array([0]), np.array([0]), np.array([0]))[0])

    # Keep the reachable states only, then expand the columns to the vocabulary.
    keep = fsa.reachable(table, start)
    new_id = np.full(S + 1, REJECT, dtype=np.int32)  # last slot maps REJECT
    new_id[np.nonzero(keep)[0]] = np.arange(int(keep.sum()), dtype=np.int32)
    table = new_id[table[keep]][:, token_column]
    all_ts = np.concatenate([[-1] * first, ts_of])
    all_t = np.concatenate([[0] * first, t_of])
    all_e = np.concatenate([[0] * first, e_of])
    info = {
        "time_signature": all_ts[keep].astype(np.int32),
        "position": all_t[keep].astype(np.int32),
        "note_end_ahead_ticks": all_e[keep].astype(np.int32),
        "ticks_per_position": np.concatenate([[1] * first, tick_of])[keep].astype(np.int32),
        "bar_length": np.concatenate([[0] * first, L_of])[keep].astype(np.int32),
        "time_signature_names": np.array([f"{n}/{d}" for n, d in sigs]),
    }
    return Component(
        name="tsd-time",
        transitions=table,
        accepting=np.ones(table.shape[0], dtype=bool),
        start=int(new_id[start]),
        info=info,
    )


# -- time-runs ------------------------------------------------------------------------------
def time_runs_component(vocab: Sequence[str], positions_per_beat: int) -> Component:
    """Runs of TimeShift (and Rest) tokens are miditok's greedy decompositions of a gap.

    miditok writes a gap ``g`` as the largest value ``v <= g``, then the rest of the gap
    the same way, so a run ``v1 v2 ... vk`` is greedy iff for every ``i`` the next value
    above ``vi`` exceeds ``vi + ... + vk``. The state is the *slack*: the least over the run
    of (next value above ``vi``) - (sum from ``vi`` on); a next value must be below it. A
    TimeShift run after Rests continues the rests' slack too (the greedy rests of a gap
    leave less than the next rest value over for the TimeShifts). States: none (not in a
    run, or no limit), ``("TimeShift", slack)`` and ``("Rest", slack)``.
    """
    kinds = [_split(tok) for tok in vocab]
    shifts = sorted({beats_to_positions(v, positions_per_beat) for k, v in kinds if k == "TimeShift"})
    rests = sorted({beats_to_positions(v, positions_per_beat) for k, v in kinds if k == "Rest"})

    def slack_after(values: list[int], x: int, limit: int | None) -> int | None:
        """min(next value above ``x`` - ``x``, ``limit`` - ``x``); ``None``: no limit."""
        i = bisect_right(values, x)
        bounds = [b - x for b in (values[i] if i < len(values) else None, limit) if b is not None]
        return min(bounds) if bounds else None

    State = tuple[str, int]  # ("", 0): none
    none: State = ("", 0)

    def step(state: State, kind: str, value: str) -> State | None:
        run, slack = state
        if kind == "TimeShift":
            d = beats_to_positions(value, positions_per_beat)
            if run and d >= slack:  # after Rests too: their slack covers the remainder
                return None
            s = slack_after(shifts, d, slack if run else None)
            return none if s is None else ("TimeShift", s)
        if kind == "Rest":
            r = beats_to_positions(value, positions_per_beat)
            if run == "Rest" and r >= slack:
                return None
            # A Rest after a TimeShift starts afresh (the syntax forbids it anyway).
            s = slack_after(rests, r, slack if run == "Rest" else None)
            return none if s is None else ("Rest", s)
        return none

    states: list[State] = [none]
    index = {none: 0}
    rows: list[list[int]] = []
    i = 0
    memo: dict[tuple[State, str, str], State | None] = {}
    while i < len(states):
        row = []
        for kind, value in kinds:
            key = (states[i], kind, value if kind in ("TimeShift", "Rest") else "")
            if key not in memo:
                memo[key] = step(states[i], kind, value)
            nxt = memo[key]
            if nxt is None:
                row.append(REJECT)
                continue
            if nxt not in index:
                index[nxt] = len(states)
                states.append(nxt)
            row.append(index[nxt])
        rows.append(row)
        i += 1
    return Component(
        name="time-runs",
        transitions=np.array(rows, dtype=np.int32).reshape(len(states), len(vocab)),
        accepting=np.ones(len(states), dtype=bool),
        start=0,
        info={
            "run": np.array([s[0] or "none" for s in states]),
            "slack": np.array([s[1] for s in states], dtype=np.int32),
        },
    )


# -- note-order -----------------------------------------------------------------------------
def note_order_component(vocab: Sequence[str], use_programs: bool) -> Component:
    """Notes at one time as miditok writes them with ``remove_duplicated_notes``: pitches
    strictly ascending within a program's run (its events at this time, written together,
    the runs in the score's track order: see
    :func:`gramophone.grammar.constraints.note_order_component`); a program's Chord and
    PitchBend only before the first note of its run. That a program has one run per time is
    :func:`~gramophone.grammar.constraints.program_runs_components`' part.

    State ``(program, last)``: the program of the latest Program token at this time (or
    none) and the last pitch of its run (or none). TimeShift and Rest start a new time; a
    Program token of another program a new run. Back to the same program only if a higher
    pitch of its kind is left for it (after a Program token the syntax wants a pitch bend, chord or
    note, and the first two only come before the run's first note: without this the
    lockstep product would have a dead end after its highest pitch).
    """
    kinds = [_split(tok) for tok in vocab]
    pitch_values = sorted({int(v) for k, v in kinds if k in ("Pitch", "PitchDrum")})
    program_values = sorted({int(v) for k, v in kinds if k == "Program"}) if use_programs else []
    n_last = len(pitch_values) + 1  # index 0: none
    n_prog = len(program_values) + 1  # index 0: none
    S = n_prog * n_last
    prog_of = np.arange(S) // n_last
    last_of = np.arange(S) % n_last
    pitch_index = {p: i + 1 for i, p in enumerate(pitch_values)}
    prog_index = {p: i + 1 for i, p in enumerate(program_values)}
    identity = np.arange(S, dtype=np.int32)
    top_index = highest_pitch_index(kinds, pitch_values, program_values)
    columns: dict[str, Callable[[str], np.ndarray]] = {
        "TimeShift": lambda _v: np.zeros(S, dtype=np.int32),
        "Rest": lambda _v: np.zeros(S, dtype=np.int32),
        "Pitch": lambda v: np.where(
            last_of < pitch_index[int(v)], prog_of * n_last + pitch_index[int(v)], REJECT
        ),
        "Chord": lambda _v: np.where(last_of == 0, identity, REJECT),
        "PitchBend": lambda _v: np.where(last_of == 0, identity, REJECT),
    }
    columns["PitchDrum"] = columns["Pitch"]

    def program_column(value: str) -> np.ndarray:
        j = prog_index.get(int(value))
        if j is None:
            return np.full(S, REJECT, dtype=np.int32)
        same = (prog_of == j) & (last_of < top_index[prog_of])
        other = prog_of != j  # includes none (0): a new run
        return np.where(same, identity, np.where(other, j * n_last, REJECT))

    if use_programs:
        columns["Program"] = program_column
    T = np.empty((S, len(vocab)), dtype=np.int32)
    for v, (kind, value) in enumerate(kinds):
        make = columns.get(kind)
        T[:, v] = identity if make is None else make(value)
    programs = np.array([-2, *program_values], dtype=np.int32)  # -2: none
    pitches = np.array([-1, *pitch_values], dtype=np.int32)  # -1: none
    return Component(
        name="note-order",
        transitions=T,
        accepting=np.ones(S, dtype=bool),
        start=0,
        info={"program": programs[prog_of], "last_pitch": pitches[last_of]},
        neutral=True,  # an ending never needs another note at this time
    )


# -- derive -----------------------------------------------------------------------------------
def _check_time_values(name: str, values: Sequence[tuple[int, int, int]], positions_per_beat: int) -> None:
    """miditok's greedy spelling of a gap (and our time model) needs whole positions listed
    in increasing order."""
    try:
        positions = [beats_to_positions(".".join(map(str, v)), positions_per_beat) for v in values]
    except UnsupportedConfigError as exc:
        raise UnsupportedConfigError(f"tokenizer option {name}: {exc}") from exc
    if any(b <= a for a, b in pairwise(positions)):
        raise UnsupportedConfigError(
            f"tokenizer option {name} must give increasing time values (ranges in increasing, "
            "non-overlapping order)"
        )


def derive(tokenizer: MusicTokenizer) -> TsdGrammar:
    """Narrow the TSD grammar to ``tokenizer``'s config (or refuse the config)."""
    from miditok import TSD

    if not isinstance(tokenizer, TSD):
        raise UnsupportedConfigError(
            f"tokenizer {type(tokenizer).__name__} is not supported: this grammar is for TSD"
        )
    cfg = tokenizer.config
    refuse_common_options(cfg)
    ppb = int(cfg.max_num_pos_per_beat)
    _check_time_values("beat_res", tokenizer.durations, ppb)
    if cfg.use_rests:
        _check_time_values("beat_res_rest", tokenizer.rests, ppb)

    absent = absent_terminals(cfg, event_options(cfg))
    overrides = []
    if not cfg.use_velocities:
        overrides.append("%override velocity:")
    if not cfg.use_programs:
        overrides += ["%override program:", "%override later_voices:"]
    if not cfg.use_time_signatures:
        overrides.append("%override opening: block | advance block")
    text = grammar_file_text("tsd")
    if overrides:
        text += "\n// Derived from the tokenizer config:\n" + "\n".join(overrides) + "\n"

    time_sigs = (
        tuple((int(n), int(d)) for n, d in tokenizer.time_signatures) if cfg.use_time_signatures else ()
    )
    return TsdGrammar(
        text=text,
        absent_terminals=tuple(sorted(absent)),
        time=TsdTimeModel(positions_per_beat=ppb, time_signatures=time_sigs, use_rests=bool(cfg.use_rests)),
        remove_duplicated_notes=bool(cfg.remove_duplicated_notes),
        use_programs=bool(cfg.use_programs),
        drum_pitches=bool(cfg.use_programs and cfg.use_pitchdrum_tokens),
    )
