"""Constraint automata built in code: what EBNF states badly.

Each builder returns a :class:`~gramophone.grammar.automaton.Component`, a DFA over the
whole vocabulary that is run in lockstep with the syntax automaton (the mask is the AND
of the components' rows). A component only reads the tokens it cares about and loops on
every other token, so it stays small and independent of the syntax.

- :func:`time_component`: positions strictly increase inside a bar and stay below the
  bar's length for its time signature; rests advance time from the end of the last note
  (as miditok's decoder does) and may cross bar lines without a Bar token; a time
  signature only at the start of a bar.
- :func:`note_order_component`: a canonical order of notes at one onset (programs
  ascending, pitches strictly ascending within a program), which makes duplicated notes
  impossible, and a chord only before the first note of its program.
- :func:`bars_component`: exactly N bars (the pattern for user constraints).

Time is counted in positions (``1 / positions_per_beat`` of a beat, the beat being the
time signature's denominator, as in miditok).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from gramophone.errors import UnsupportedConfigError
from gramophone.grammar.automaton import Component
from gramophone.grammar.fsa import REJECT

__all__ = ["TimeModel", "bars_component", "note_order_component", "time_component"]


def _split(token: str) -> tuple[str, str]:
    kind, _, value = token.partition("_")
    return kind, value


def beats_to_positions(value: str, positions_per_beat: int) -> int:
    """``"a.b.c"`` (a beats + b/c beat, miditok's Duration/Rest values) -> positions."""
    a, b, c = (int(x) for x in value.split("."))
    positions = Fraction(a) * positions_per_beat + Fraction(b * positions_per_beat, c)
    if positions.denominator != 1:
        raise UnsupportedConfigError(
            f"'{value}' is not a whole number of positions at {positions_per_beat} per beat: "
            "rest and duration resolutions must divide the position resolution"
        )
    return int(positions)


@dataclass(frozen=True)
class TimeModel:
    """What the time constraint needs to know of a tokenizer config."""

    positions_per_beat: int
    time_signatures: tuple[tuple[int, int], ...]  # those a stream may use
    default_time_signature: tuple[int, int]  # in force when the config has no TimeSig tokens
    use_time_signatures: bool
    use_rests: bool

    def bar_length(self, ts: tuple[int, int]) -> int:
        return ts[0] * self.positions_per_beat


def time_component(vocab: Sequence[str], model: TimeModel) -> Component:
    """Positions, bars, time signatures and rests.

    State ``(ts, p, e)``: ``ts`` the time signature of the current bar, ``p`` the last
    position in this bar (-1: none yet; the next Position must be greater), and, when rests
    are used, ``e`` such that ``p + e`` is where a rest would start (the end of the
    latest-ending note, or the current time). After a rest that ends at time ``t`` the
    state is ``(ts, t - 1, 1)``: a Position may then equal ``t``. Plus one initial state.
    """
    sigs = list(model.time_signatures) if model.use_time_signatures else [model.default_time_signature]
    L = np.array([model.bar_length(ts) for ts in sigs], dtype=np.int64)
    P = model.positions_per_beat
    V = len(vocab)
    kinds = [_split(tok) for tok in vocab]
    durations = [beats_to_positions(v, P) for k, v in kinds if k == "Duration"] if model.use_rests else []
    E = (max(durations) + 1) if durations else (1 if model.use_rests else 0)
    n_e = E + 1
    sizes = (L + 1) * n_e
    offsets = 1 + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    S = int(1 + sizes.sum())

    # Enumerate every non-initial state.
    ts_of = np.concatenate([np.full(int(n), i) for i, n in enumerate(sizes)])
    local = np.concatenate([np.arange(int(n)) for n in sizes])
    p_of = local // n_e - 1
    e_of = local % n_e
    L_of = L[ts_of]

    def sid(ts: np.ndarray, p: np.ndarray, e: np.ndarray) -> np.ndarray:
        return offsets[ts] + (p + 1) * n_e + e

    T = np.full((S, V), REJECT, dtype=np.int64)
    rows = np.arange(1, S)
    bar_start_e = 1 if model.use_rests else 0
    ts_index = {f"{n}/{d}": i for i, (n, d) in enumerate(sigs)}
    default_ts = ts_index.get("{}/{}".format(*model.default_time_signature), 0)
    for v, (kind, value) in enumerate(kinds):
        col = np.full(S, REJECT, dtype=np.int64)
        if kind == "Bar":
            e_next = (
                np.maximum(0, p_of + e_of - L_of) + bar_start_e if model.use_rests else np.zeros_like(e_of)
            )
            e_next = np.minimum(e_next, E)
            col[rows] = sid(ts_of, np.full_like(p_of, -1), e_next)
            col[0] = sid(np.array([default_ts]), np.array([-1]), np.array([bar_start_e]))[0]
        elif kind == "TimeSig":
            if value not in ts_index:
                T[:, v] = REJECT
                continue
            j = ts_index[value]
            ok = p_of == -1
            col[rows[ok]] = sid(np.full(int(ok.sum()), j), p_of[ok], e_of[ok])
        elif kind == "Position":
            q = int(value)
            ok = (p_of < q) & (q < L_of)
            e_next = np.maximum(0, p_of + e_of - q) if model.use_rests else e_of
            col[rows[ok]] = sid(ts_of[ok], np.full(int(ok.sum()), q), e_next[ok])
        elif kind == "Rest":
            if not model.use_rests:
                continue
            r = beats_to_positions(value, P)
            t = p_of + e_of + r
            t_in_bar = t % L_of
            col[rows] = sid(ts_of, t_in_bar - 1, np.ones_like(t_in_bar))
            if not model.use_time_signatures:  # miditok only starts with rests then
                t0 = r % int(L[default_ts])
                col[0] = sid(np.array([default_ts]), np.array([t0 - 1]), np.array([1]))[0]
        elif kind == "Duration" and model.use_rests:
            d = beats_to_positions(value, P)
            col[rows] = sid(ts_of, p_of, np.maximum(e_of, d))
        else:  # a token time does not see
            col = np.arange(S)
            col[0] = 0
        T[:, v] = col
    T32 = T.astype(np.int32)
    info = {
        "time_signature": np.concatenate([[-1], ts_of]).astype(np.int32),
        "position": np.concatenate([[-1], p_of]).astype(np.int32),
        "note_end_ahead": np.concatenate([[0], e_of]).astype(np.int32),
        "bar_length": np.concatenate([[0], L_of]).astype(np.int32),
    }
    names = np.array([f"{n}/{d}" for n, d in sigs])
    return Component(
        name="time",
        transitions=T32,
        accepting=np.ones(S, dtype=bool),
        start=0,
        info={**info, "time_signature_names": names},
    )


def note_order_component(vocab: Sequence[str], use_programs: bool) -> Component:
    """Notes at one onset in canonical order: programs ascending, pitches strictly
    ascending within a program; a Chord only before the first note of its program.

    State ``(program, last)`` with ``program`` -1 ... 127 or none and ``last`` the last
    pitch of this program at this onset or none. Position, Bar and Rest start a new onset.
    """
    kinds = [_split(tok) for tok in vocab]
    pitch_values = sorted({int(v) for k, v in kinds if k in ("Pitch", "PitchDrum")})
    program_values = sorted({int(v) for k, v in kinds if k == "Program"}) if use_programs else []
    n_last = len(pitch_values) + 1  # index 0: none
    n_prog = len(program_values) + 1  # index 0: none
    S = n_prog * n_last
    prog_of = np.arange(S) // n_last  # 0 = none, i = program_values[i-1]
    last_of = np.arange(S) % n_last  # 0 = none, i = pitch_values[i-1]
    pitch_index = {p: i + 1 for i, p in enumerate(pitch_values)}
    prog_index = {p: i + 1 for i, p in enumerate(program_values)}
    T = np.empty((S, len(vocab)), dtype=np.int32)
    identity = np.arange(S, dtype=np.int32)
    for v, (kind, value) in enumerate(kinds):
        if kind in ("Position", "Bar", "Rest"):
            T[:, v] = 0
        elif kind in ("Pitch", "PitchDrum"):
            i = pitch_index[int(value)]
            T[:, v] = np.where(last_of < i, prog_of * n_last + i, REJECT)
        elif kind == "Chord":
            T[:, v] = np.where(last_of == 0, identity, REJECT)
        elif use_programs and kind in ("Program", "Pedal", "PedalOff"):
            j = prog_index.get(int(value))
            if j is None:
                T[:, v] = REJECT
                continue
            same = prog_of == j
            if kind == "Program":
                # Back to the same program only if a higher pitch is left for it: after a
                # Program token the syntax wants its pitch bend, chord or note, and the
                # first two only come before the program's first note. Without this the
                # lockstep product would have a dead end after its highest pitch.
                same &= last_of < n_last - 1
            later = prog_of < j  # includes none (0)
            T[:, v] = np.where(same, identity, np.where(later, j * n_last, REJECT))
        else:
            T[:, v] = identity
    programs = np.array([-2, *program_values], dtype=np.int32)  # -2: none
    pitches = np.array([-1, *pitch_values], dtype=np.int32)  # -1: none
    return Component(
        name="note-order",
        transitions=T,
        accepting=np.ones(S, dtype=bool),
        start=0,
        info={"program": programs[prog_of], "last_pitch": pitches[last_of]},
        neutral=True,  # an ending never needs another note at this onset
    )


def bars_component(vocab: Sequence[str], bars: int) -> Component:
    """Exactly ``bars`` Bar tokens.

    Bars that rests cross without a Bar token are not counted: with ``use_rests`` this
    counts Bar tokens, not bar lines.
    """
    if bars < 1:
        raise ValueError("the number of bars must be at least 1")
    S = bars + 1
    T = np.tile(np.arange(S, dtype=np.int32)[:, None], (1, len(vocab)))
    for v, tok in enumerate(vocab):
        if tok == "Bar_None":
            T[:, v] = np.append(np.arange(1, S, dtype=np.int32), REJECT)
    accepting = np.zeros(S, dtype=bool)
    accepting[bars] = True
    return Component(name=f"bars={bars}", transitions=T, accepting=accepting, start=0, info={})
