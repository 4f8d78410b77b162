"""Constraint automata built in code: what EBNF states badly.

Each builder returns a :class:`~gramophone.grammar.automaton.Component`, a DFA over the
whole vocabulary that is run in lockstep with the syntax automaton (the mask is the AND
of the components' rows). A component only reads the tokens it cares about and loops on
every other token, so it stays small and independent of the syntax.

- :func:`time_component`: positions strictly increase inside a bar and stay below the
  bar's length for its time signature; rests advance time from the end of the last note
  (as miditok's decoder does, in its ticks: a note end survives a change of meter) and may
  cross bar lines without a Bar token; a time signature only at the start of a bar.
- :func:`note_order_component`: a canonical order of notes at one onset (programs
  ascending, pitches strictly ascending within a program), which makes duplicated notes
  impossible, and a chord only before the first note of its program.
- :func:`bars_component`: exactly N bars (the pattern for user constraints).

Time is counted in positions (``1 / positions_per_beat`` of a beat, the beat being the
time signature's denominator, as in miditok); where meters of different denominators meet,
in ticks (miditok's ``time_division``: a position of the meter with the largest
denominator), so that a 6/8 position is one tick and a 4/4 position two.
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


def _reachable(T: np.ndarray, start: int) -> np.ndarray:
    """``bool[S]``: states reachable from ``start`` (a mask per level, no sort: the time
    table with rests is large)."""
    seen = np.zeros(T.shape[0], dtype=bool)
    seen[start] = True
    frontier = np.array([start])
    while frontier.size:
        hit = np.zeros_like(seen)
        nxt = T[frontier].ravel()
        hit[nxt[nxt != REJECT]] = True
        hit &= ~seen
        seen |= hit
        frontier = np.nonzero(hit)[0]
    return seen


def time_component(vocab: Sequence[str], model: TimeModel) -> Component:
    """Positions, bars, time signatures and rests, in the time of miditok's REMI decoder.

    State ``(ts, p, e)``: ``ts`` the time signature of the current bar; ``p`` the last
    position in this bar (-1: none yet), the next Position must be greater; and, with
    rests, ``e``, where a rest would start (the later of the current time and the latest
    note end) counted from the *anchor* ``max(p, 0)`` (position 0 when ``p`` is -1), in
    **ticks**: positions of the finest meter of the config (with x/8 meters a 4/4 position
    is two ticks), miditok's own resolution. A note end then survives changes of meter
    exactly (a note held from a 6/8 bar into a 4/4 bar ends where it ends), and so does a
    rest that starts at a note end between two positions of the meter in force. After
    rests that end at tick ``t`` of the bar, ``p`` is the last position before ``t`` (a
    Position may then be ``t`` or later) and ``e`` the ticks from it to ``t``. Plus one
    initial state. Without rests ``e`` is always 0 and the table is the positions' alone.
    States that cannot be reached are dropped.
    """
    sigs = list(model.time_signatures) if model.use_time_signatures else [model.default_time_signature]
    P = model.positions_per_beat
    L = np.array([model.bar_length(ts) for ts in sigs], dtype=np.int64)  # in positions
    den = np.array([d for _, d in sigs], dtype=np.int64)
    k = den.max() // den  # ticks per position of each meter (miditok: max denominator / denominator)
    V = len(vocab)
    kinds = [_split(tok) for tok in vocab]
    durations = [beats_to_positions(v, P) for kd, v in kinds if kd == "Duration"] if model.use_rests else []
    # The longest note, started in the coarsest meter; a rest leaves at most one position.
    E = max([*durations, 1]) * int(k.max()) if model.use_rests else 0
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
    k_of = k[ts_of]
    anchor = np.maximum(p_of, 0) * k_of  # ticks into the bar
    rows = np.arange(1, S)

    def sid(ts: np.ndarray, p: np.ndarray, e: np.ndarray) -> np.ndarray:
        if (e > E).any() or (e < 0).any():
            raise AssertionError("time: a note end outside the tracked range")  # see E above
        return offsets[ts] + (p + 1) * n_e + e

    def after_rest(ts: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The state at tick ``t`` of a bar of ``ts`` reached by rests."""
        kk = k[ts]
        p = -(-t // kk) - 1  # the last position before t
        return sid(ts, p, t - np.maximum(p, 0) * kk)

    ts_index = {f"{n}/{d}": i for i, (n, d) in enumerate(sigs)}
    default_ts = ts_index.get("{}/{}".format(*model.default_time_signature), 0)

    def column(kind: str, value: str) -> np.ndarray:
        col = np.full(S, REJECT, dtype=np.int64)
        if kind == "Bar":
            # miditok's decoder: the next bar starts a bar length after this one.
            e_next = np.maximum(0, anchor + e_of - L_of * k_of) if model.use_rests else e_of
            col[rows] = sid(ts_of, np.full_like(p_of, -1), e_next)
            col[0] = sid(np.array([default_ts]), np.array([-1]), np.array([0]))[0]
        elif kind == "TimeSig":
            if value not in ts_index:
                return col
            j = ts_index[value]
            ok = p_of == -1
            col[rows[ok]] = sid(np.full(int(ok.sum()), j), p_of[ok], e_of[ok])
        elif kind == "Position":
            q = int(value)
            ok = (p_of < q) & (q < L_of)
            e_next = np.maximum(0, anchor + e_of - q * k_of) if model.use_rests else e_of
            col[rows[ok]] = sid(ts_of[ok], np.full(int(ok.sum()), q), e_next[ok])
        elif kind == "Rest":
            if not model.use_rests:
                return col
            r = beats_to_positions(value, P)
            # miditok's decoder: from max(previous note end, current time), r positions of
            # the meter in force; whole bars passed count without Bar tokens.
            t = (anchor + e_of + r * k_of) % (L_of * k_of)
            col[rows] = after_rest(ts_of, t)
            if not model.use_time_signatures:  # miditok only starts with rests then
                t0 = (r * int(k[default_ts])) % int(L[default_ts] * k[default_ts])
                col[0] = after_rest(np.array([default_ts]), np.array([t0]))[0]
        elif kind == "Duration" and model.use_rests:
            d = beats_to_positions(value, P)
            col[rows] = sid(ts_of, p_of, np.maximum(e_of, d * k_of))
        else:  # a token time does not see
            col = np.arange(S)
            col[0] = 0
        return col

    # Tokens of one type and time value share a column: build each distinct column once.
    distinct: dict[tuple[str, str], int] = {}
    columns: list[np.ndarray] = []
    token_column = np.empty(V, dtype=np.int64)
    for v, (kind, value) in enumerate(kinds):
        key = (kind, value) if kind in ("Bar", "TimeSig", "Position", "Rest", "Duration") else ("", "")
        if key not in distinct:
            distinct[key] = len(columns)
            columns.append(column(kind, value))
        token_column[v] = distinct[key]
    table = np.stack(columns, axis=1)  # (S, distinct columns)
    all_ts = np.concatenate([[-1], ts_of])
    all_p = np.concatenate([[-1], p_of])
    all_e = np.concatenate([[0], e_of])
    all_L = np.concatenate([[0], L_of])
    all_k = np.concatenate([[1], k_of])
    if model.use_rests:  # keep the reachable states only
        keep = _reachable(table, 0)
        new_id = np.full(S + 1, REJECT, dtype=np.int64)  # the last slot maps REJECT
        new_id[np.nonzero(keep)[0]] = np.arange(int(keep.sum()))
        table = new_id[table[keep]]
        all_ts, all_p, all_e, all_L, all_k = (a[keep] for a in (all_ts, all_p, all_e, all_L, all_k))
    T32 = table.astype(np.int32)[:, token_column]
    info = {
        "time_signature": all_ts.astype(np.int32),
        "position": all_p.astype(np.int32),
        "note_end_ahead_ticks": all_e.astype(np.int32),
        "ticks_per_position": all_k.astype(np.int32),
        "bar_length": all_L.astype(np.int32),
    }
    names = np.array([f"{n}/{d}" for n, d in sigs])
    return Component(
        name="time",
        transitions=T32,
        accepting=np.ones(T32.shape[0], dtype=bool),
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
