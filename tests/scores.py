"""Random ``symusic`` scores, independent of any grammar (test helper).

An oracle that draws its inputs from the automaton's own language cannot find a false
rejection: these scores come from music instead. What miditok's ``encode`` writes from them
is what a user's files hold, so every stream must be accepted.

The scores are small (a few bars) and made of what real files have and what trips a time
model up: chords and duplicated notes, gaps (rests), notes on and off every grid (triplets,
odd ticks), notes crossing bar lines and time signature changes, notes longer than the
longest Duration, pickups (a short first bar, or silence before the first note), tempo
changes on and off the grid, time signatures the tokenizer has and ones it does not (miditok
drops those), a change that is not on a bar line (miditok delays it to the next one), two
changes at one tick, several tracks and programs (drums included) where the config uses
programs, pedals and pitch bends.

The same construction serves hypothesis (:func:`scores`, which draws every choice from
hypothesis, so that failures shrink) and plain seeded runs (:func:`random_score`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from hypothesis import strategies as st

__all__ = ["COMMON_TIME_SIGNATURES", "RARE_TIME_SIGNATURES", "describe", "random_score", "scores"]

T = TypeVar("T")

#: miditok's default ``time_signature_range`` (what the default vocabularies hold).
COMMON_TIME_SIGNATURES: tuple[tuple[int, int], ...] = (
    (4, 4),
    (3, 4),
    (2, 4),
    (6, 8),
    (3, 8),
    (12, 8),
    (5, 4),
    (6, 4),
    (1, 4),
)
#: Real meters outside it (miditok drops them: the meter before goes on).
RARE_TIME_SIGNATURES: tuple[tuple[int, int], ...] = ((7, 8), (5, 8), (9, 8), (2, 2), (3, 2), (7, 4), (6, 16))

#: Ticks per quarter note of the files (miditok resamples them); some do not divide evenly.
RESOLUTIONS = (480, 384, 96, 220, 1000, 24)


class Dice(Protocol):
    """Where the choices come from: hypothesis, or a seeded ``random.Random``."""

    def integer(self, lo: int, hi: int) -> int: ...  # lo..hi inclusive

    def choice(self, options: Sequence[T]) -> T: ...

    def chance(self, p: float) -> bool: ...


class _RandomDice:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p


class _DrawDice:
    """Each choice is its own small hypothesis draw (shrinks towards the first option,
    the smallest integer and False)."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, options: Sequence[T]) -> T:
        return options[self.draw(st.integers(0, len(options) - 1))]

    def chance(self, p: float) -> bool:
        # Draw a weight out of 16, so that rare branches are drawn rarely but shrink to False.
        return self.draw(st.integers(0, 15)) < round(16 * p)


def _bar_ticks(tpq: int, ts: tuple[int, int]) -> int:
    return ts[0] * tpq * 4 // ts[1]


def _meters(dice: Dice, tpq: int, rare: bool) -> list[tuple[int, int, int]]:
    """Time signature changes (tick, numerator, denominator), in time order."""
    pool = COMMON_TIME_SIGNATURES + (RARE_TIME_SIGNATURES if rare else ())

    def meter() -> tuple[int, int]:
        return dice.choice(pool) if dice.chance(0.25) else dice.choice(COMMON_TIME_SIGNATURES)

    if dice.chance(0.1):
        return []  # no time signature at all: miditok assumes 4/4
    out: list[tuple[int, int, int]] = []
    tick = 0
    if dice.chance(0.2):  # a pickup written as a short first bar
        short = dice.choice([(1, 4), (2, 4), (3, 8), (1, 8), (3, 4)])
        out.append((0, *short))
        tick = _bar_ticks(tpq, short)
    for _ in range(dice.integer(1, 3)):
        ts = meter()
        at = tick
        if out and dice.chance(0.1):  # not on a bar line: miditok delays it
            at = tick + dice.integer(1, max(1, _bar_ticks(tpq, (out[-1][1], out[-1][2])) - 1))
        out.append((at, *ts))
        if dice.chance(0.08):  # a second change at the same tick (the later one wins)
            out.append((at, *meter()))
        tick = at + dice.integer(1, 3) * _bar_ticks(tpq, (out[-1][1], out[-1][2]))
    return out


def _grid(dice: Dice, tpq: int, ts: tuple[int, int]) -> int:
    """A step to place onsets and durations on: a beat's fraction, or a bare tick."""
    beat = tpq * 4 // ts[1]
    step = dice.choice([beat, beat // 2, beat // 4, beat // 3, beat // 8, beat // 6, beat * 2, 1])
    return max(1, step)


def _build(dice: Dice, tokenizer: Any) -> Any:
    from symusic import Note, Pedal, PitchBend, Score, Tempo, TimeSignature, Track

    cfg = tokenizer.config
    tpq = dice.choice(RESOLUTIONS)
    score: Any = Score(tpq)
    meters = _meters(dice, tpq, rare=True)
    for tick, n, d in meters:
        score.time_signatures.append(TimeSignature(tick, n, d))
    # Bars as the music has them (the last meter goes on for a bar or two after its changes).
    bars: list[tuple[int, tuple[int, int]]] = []
    plan = meters or [(0, 4, 4)]
    for i, (tick, n, d) in enumerate(plan):
        end = plan[i + 1][0] if i + 1 < len(plan) else tick + 2 * _bar_ticks(tpq, (n, d))
        t = tick
        while t < end:
            bars.append((t, (n, d)))
            t += _bar_ticks(tpq, (n, d))
    end_tick = max(t for t, _ in bars) + _bar_ticks(tpq, bars[-1][1])

    for _ in range(dice.integer(0, 3)):
        at = dice.choice(bars)[0] if dice.chance(0.4) else dice.integer(0, end_tick)
        score.tempos.append(Tempo(at, float(dice.integer(30, 260)) + dice.choice([0.0, 0.5, 0.37])))

    if cfg.use_programs:
        programs = sorted(cfg.programs)
        choices = [p for p in (-1, 0, 24, 40, 41, 42, 73) if p in programs] or programs[:3]
    else:
        choices = [0, -1]  # one stream per track; a drum track writes PitchDrum tokens
    for _ in range(dice.integer(1, 3)):
        program = dice.choice(choices)
        drum = program == -1
        track: Any = Track(program=0 if drum else program, is_drum=drum)
        lo, hi = cfg.drums_pitch_range if drum else cfg.pitch_range
        start_bar = dice.integer(0, len(bars) - 1) if dice.chance(0.2) else 0  # enter late
        for _ in range(dice.integer(1, 8)):
            bar_tick, ts = dice.choice(bars[start_bar:])
            step = _grid(dice, tpq, ts)
            onset = bar_tick + step * dice.integer(0, max(0, _bar_ticks(tpq, ts) // step - 1))
            if dice.chance(0.15):
                onset += dice.integer(1, 7)  # off every grid
            kind = dice.choice(["short", "beats", "bars", "past the longest Duration", "to a bar line"])
            if kind == "short":
                duration = dice.integer(1, tpq)
            elif kind == "beats":
                duration = step * dice.integer(1, 8)
            elif kind == "bars":
                duration = _bar_ticks(tpq, ts) * dice.integer(1, 3) + dice.choice([0, step, -step])
            elif kind == "past the longest Duration":
                duration = tpq * dice.integer(13, 30)
            else:  # ends exactly on, or just around, the next bar line
                duration = bar_tick + _bar_ticks(tpq, ts) - onset + dice.choice([0, 0, 1, -1, step])
            pitch = dice.integer(max(0, lo - 2), min(127, hi + 2))  # a few outside the range
            for k in range(dice.choice([1, 1, 1, 2, 3, 4])):  # chords
                p = min(127, pitch + k * dice.integer(0, 7))  # 0: a duplicated note
                d = duration if dice.chance(0.7) else dice.integer(1, 2 * tpq)
                track.notes.append(Note(onset, max(1, d), p, dice.integer(1, 127)))
        for _ in range(dice.integer(0, 2) if cfg.use_sustain_pedals else 0):
            track.pedals.append(Pedal(dice.integer(0, end_tick), dice.integer(1, 4 * tpq)))
        for _ in range(dice.integer(0, 2) if cfg.use_pitch_bends else 0):
            track.pitch_bends.append(PitchBend(dice.integer(0, end_tick), dice.integer(-8192, 8191)))
        track.notes.sort()
        track.pedals.sort()
        track.pitch_bends.sort()
        score.tracks.append(track)
    score.tempos.sort()
    score.time_signatures.sort()
    return score


def random_score(rng: random.Random | int, tokenizer: Any) -> Any:
    """A random score for ``tokenizer`` (its config only chooses programs, pitch ranges,
    and whether pedals and pitch bends are worth writing), from a seed or a ``Random``."""
    if isinstance(rng, int):
        rng = random.Random(rng)
    return _build(_RandomDice(rng), tokenizer)


def scores(tokenizer: Any) -> st.SearchStrategy[Any]:
    """Hypothesis strategy of :func:`random_score`'s scores, each choice drawn locally."""
    build: Callable[[st.DrawFn], Any] = lambda draw: _build(_DrawDice(draw), tokenizer)  # noqa: E731
    return st.composite(build)()


def describe(score: Any) -> str:
    """The score in a few lines (for failure reports): meters, tempos, tracks and notes."""
    lines = [
        f"Score({score.ticks_per_quarter}) meters "
        + str([(t.time, t.numerator, t.denominator) for t in score.time_signatures])
        + " tempos "
        + str([(t.time, round(t.qpm, 2)) for t in score.tempos])
    ]
    for t in score.tracks:
        lines.append(
            f"  track program={t.program} drum={t.is_drum} notes (time, duration, pitch) "
            + str([(n.time, n.duration, n.pitch) for n in t.notes])
            + (f" pedals {[(p.time, p.duration) for p in t.pedals]}" if len(t.pedals) else "")
            + (f" bends {[(b.time, b.value) for b in t.pitch_bends]}" if len(t.pitch_bends) else "")
        )
    return "\n".join(lines)
