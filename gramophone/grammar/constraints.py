"""Constraint automata built in code: what EBNF states badly.

Each builder returns a :class:`~gramophone.grammar.automaton.Component`, a DFA over the
whole vocabulary that is run in lockstep with the syntax automaton (the mask is the AND
of the components' rows). A component only reads the tokens it cares about and loops on
every other token, so it stays small and independent of the syntax.

- :func:`time_component`: positions strictly increase inside a bar and stay below the
  bar's length for its time signature; rests advance time from the end of the last note
  (as miditok's decoder does, in its ticks: a note end survives a change of meter) and may
  cross bar lines without a Bar token; a time signature only at the start of a bar.
- :func:`note_order_component`: the order of notes at one onset as miditok writes it with
  ``remove_duplicated_notes``: each program's events together (a *run*; runs in any order,
  miditok's track order), pitches strictly ascending within a run, a chord only before the
  first note of its run; with :func:`program_runs_components`, at most one run per program
  at an onset. Together they make duplicated notes impossible.
- :func:`program_runs_components`: which programs have had their run at this onset.
- :func:`drum_pitch_component`: with programs and PitchDrum tokens, drum pitches only
  under ``Program_-1`` and other pitches only under other programs (and no chord on drums),
  as miditok writes them.
- :func:`bars_component`: exactly N bars (the pattern for user constraints).

Time is counted in positions (``1 / positions_per_beat`` of a beat, the beat being the
time signature's denominator, as in miditok); where meters of different denominators meet,
in ticks (miditok's ``time_division``: a position of the meter with the largest
denominator), so that a 6/8 position is one tick and a 4/4 position two.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from gramophone.errors import UnsupportedConfigError
from gramophone.grammar import fsa
from gramophone.grammar.automaton import Component
from gramophone.grammar.fsa import REJECT

__all__ = [
    "TimeModel",
    "bars_component",
    "drum_pitch_component",
    "highest_pitch_index",
    "note_order_component",
    "program_runs_components",
    "time_component",
]


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
        keep = fsa.reachable(table, 0)
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


def highest_pitch_index(
    kinds: Sequence[tuple[str, str]], pitch_values: Sequence[int], program_values: Sequence[int]
) -> np.ndarray:
    """``int64[1 + len(program_values)]``: for no program (index 0) and each program, the
    index (1-based, into ``pitch_values``, the sorted Pitch and PitchDrum values) of the
    highest pitch a note of that program can have: with PitchDrum tokens and programs, drum
    notes are PitchDrum tokens under ``Program_-1`` only and every other program's notes
    Pitch tokens (:func:`drum_pitch_component`); else all notes are Pitch tokens.

    A note-order component must use it, not the highest of both kinds: the default drum
    range (27-88) and pitch range (21-108) differ, and a program sent back to its run after
    the highest pitch of its own kind has a dead end ahead."""
    index = {p: i + 1 for i, p in enumerate(pitch_values)}
    pitch = max((int(v) for k, v in kinds if k == "Pitch"), default=None)
    drum = max((int(v) for k, v in kinds if k == "PitchDrum"), default=None)
    top = pitch if pitch is not None else drum
    out = np.full(len(program_values) + 1, index[top] if top is not None else 0, dtype=np.int64)
    if drum is not None:
        for i, j in enumerate(program_values):
            if j == -1:
                out[i + 1] = index[drum]
    return out


def note_order_component(vocab: Sequence[str], use_programs: bool) -> Component:
    """Notes at one onset as miditok writes them with ``remove_duplicated_notes``: pitches
    strictly ascending within a program's run; a Chord only before the first note of its run.

    miditok merges the tracks of one program, sorts each track's notes by time then pitch
    and removes duplicates (``preprocess_score``), then sorts the events of all tracks by
    time only, stably (``_score_to_tokens``): at one onset each track's events come
    together, in the order of the score's tracks, not of their programs. So a Program,
    Pedal or PedalOff token of another program starts a new run, whichever its program;
    that a program has one run per onset is :func:`program_runs_components`' part.

    State ``(program, last)`` with ``program`` the current run's (-1 ... 127 or none) and
    ``last`` its last pitch at this onset or none. Position, Bar and Rest start a new onset.
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
    top_index = highest_pitch_index(kinds, pitch_values, program_values)
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
                same &= last_of < top_index[prog_of]
            other = prog_of != j  # includes none (0): a new run
            T[:, v] = np.where(same, identity, np.where(other, j * n_last, REJECT))
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


#: Most states of one :func:`program_runs_components` component.
MAX_RUN_STATES = 512
#: Token kinds that carry a program and belong to its run at an onset (REMI, TSD).
RUN_KINDS: tuple[str, ...] = ("Program", "Pedal", "PedalOff")


def program_runs_components(
    vocab: Sequence[str],
    onset_kinds: Sequence[str],
    *,
    run_kinds: Sequence[str] = RUN_KINDS,
    zero_shift: str | None = None,
) -> list[Component]:
    """At one onset, each program's run at most once (with ``remove_duplicated_notes``).

    miditok merges the tracks of one program before it writes a stream with programs, and
    writes the events of one track at one onset together (see :func:`note_order_component`):
    a program whose run has ended does not come back at that onset, whatever the order of
    the runs. Tracking that needs a bit per program, so the programs are split into balanced
    groups, one component each (at most :data:`MAX_RUN_STATES` reachable states): state
    ``(seen, current)``, the set of the group's programs whose run has begun at this onset
    and the group's program of the current run (or none). A token of ``run_kinds`` of
    program ``j`` continues the run if ``j`` is current, else begins ``j``'s run unless it
    has had one (rejected). A token of ``onset_kinds`` starts a new onset.

    ``zero_shift`` (Structured): the token that joins notes into one onset without being a
    time move. Where every program fits one component, its state also holds whether the
    last pitch was the highest of its kind, and ``zero_shift`` is refused where every
    program has had its run and the current one is at its highest pitch (nothing could
    follow it). With more programs no component sees them all: a stream that has every
    program of the config at one onset, the last at its highest pitch, can then not go on
    after ``zero_shift`` (a dead end only a stream with that many notes at one onset reaches).

    All states accept; the components are ``neutral``: they only forbid a program's second
    run, and an ending never needs one.
    """
    kinds = [_split(tok) for tok in vocab]
    programs = sorted({int(v) for k, v in kinds if k == "Program"})
    if not programs:
        return []

    def states(n: int, flags: int) -> int:  # reachable: cur is none or one of seen
        return (2**n + n * 2 ** (n - 1)) * flags

    single = zero_shift is not None and states(len(programs), 2) <= MAX_RUN_STATES
    g = len(programs) if single else 1
    while g < len(programs) and states(g + 1, 1) <= MAX_RUN_STATES:
        g += 1
    n_groups = -(-len(programs) // g)
    bounds = np.linspace(0, len(programs), n_groups + 1).round().astype(int)
    top = {k: max((int(v) for kk, v in kinds if kk == k), default=None) for k in ("Pitch", "PitchDrum")}
    flags = 2 if single else 1
    out = []
    for lo, hi in itertools.pairwise(bounds):
        members = programs[lo:hi]
        n = len(members)
        index = {p: i for i, p in enumerate(members)}
        S = 2**n * (n + 1) * flags
        s = np.arange(S, dtype=np.int64)
        flag = s % flags
        cur = (s // flags) % (n + 1)  # 0: none, i + 1: members[i]
        seen = s // (flags * (n + 1))
        identity = s.astype(np.int32)
        T = np.tile(identity[:, None], (1, len(vocab)))
        for v, (kind, value) in enumerate(kinds):
            if vocab[v] == zero_shift:
                if single:
                    T[:, v] = np.where((seen == 2**n - 1) & (flag == 1), REJECT, identity)
            elif kind in onset_kinds:
                T[:, v] = 0
            elif kind in run_kinds:
                i = index.get(int(value))
                if i is None:  # another group's program: none of ours is current
                    T[:, v] = seen * (n + 1) * flags
                    continue
                begin = ((seen | 1 << i) * (n + 1) + i + 1) * flags
                T[:, v] = np.where(cur == i + 1, identity, np.where(seen >> i & 1, REJECT, begin))
            elif single and kind in top:
                T[:, v] = s - flag + int(int(value) == top[kind])
        keep = fsa.reachable(T, 0)
        new_id = np.full(S + 1, REJECT, dtype=np.int32)  # the last slot maps REJECT
        new_id[np.nonzero(keep)[0]] = np.arange(int(keep.sum()), dtype=np.int32)
        names = np.array([-2, *members], dtype=np.int32)  # -2: none
        out.append(
            Component(
                name=f"program-runs[{members[0]}..{members[-1]}]",
                transitions=new_id[T[keep]],
                accepting=np.ones(int(keep.sum()), dtype=bool),
                start=0,
                info={"program": names[cur[keep]], "seen": seen[keep].astype(np.int32)},
                neutral=True,  # an ending never needs a program's second run
            )
        )
    return out


#: Drum and melodic pitch kinds of the schemes (``use_pitchdrum_tokens``).
DRUM_KINDS = ("PitchDrum", "DrumOn", "DrumOff")
MELODIC_KINDS = ("Pitch", "NoteOn", "NoteOff")


def drum_pitch_component(vocab: Sequence[str]) -> Component:
    """With programs and ``use_pitchdrum_tokens``: drum pitches (PitchDrum, DrumOn,
    DrumOff) only under ``Program_-1``, melodic ones (Pitch, NoteOn, NoteOff) only under
    another program, and no Chord under ``Program_-1``, as miditok writes them
    (``_create_track_events``: a drum track's notes are PitchDrum/DrumOn/DrumOff tokens,
    every other track's Pitch/NoteOn/NoteOff, and chords are only detected on tracks that
    are not drums).

    States: 0 (no Program token yet: both kinds, the syntax wants a Program first), 1 (the
    last Program token is ``Program_-1``), 2 (another program). Neutral: where it forbids a
    pitch the other kind is just as short an ending.
    """
    kinds = [_split(tok) for tok in vocab]
    T = np.tile(np.arange(3, dtype=np.int32)[:, None], (1, len(vocab)))
    for v, (kind, value) in enumerate(kinds):
        if kind == "Program":
            T[:, v] = 1 if int(value) == -1 else 2
        elif kind in DRUM_KINDS:
            T[2, v] = REJECT
        elif kind in MELODIC_KINDS or kind == "Chord":
            T[1, v] = REJECT
    return Component(
        name="drum-pitch",
        transitions=T,
        accepting=np.ones(3, dtype=bool),
        start=0,
        info={"program": np.array([-2, -1, 0], dtype=np.int32)},  # -2: none, 0: a melodic one
        neutral=True,
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
