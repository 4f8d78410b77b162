"""Four musical statistics of a piece, to set sampled pieces next to the chorales.

The definitions are MusPy's (``muspy.metrics``, 0.5), over every non-drum track, a beat
being a quarter note:

* ``pitch_class_entropy``: Shannon entropy (bits) of the histogram of the notes' pitch
  classes (each note counts once; Wu & Yang 2020): 0 for one pitch class, log2(12) = 3.585
  for all twelve equally.
* ``scale_consistency``: the largest share of notes in one major or natural-minor scale,
  over the 24 of them (Mogren 2016).
* ``polyphony``: mean number of pitches sounding at once, over the time when at least one
  sounds.
* ``empty_beat_rate``: share of the beats from 0 to the end of the last note in which no
  note sounds (Dong et al. 2018).

With MusPy installed (``pip install 'gramophone[music]'``) the first three are MusPy's own
functions, on a ``muspy.Music`` built note for note from the symusic score
(:func:`to_muspy`: the resolution and every time divided by their greatest common divisor,
which changes nothing and keeps the piano roll that ``polyphony`` builds small: the
chorales' 10,080 ticks per quarter become 4). ``empty_beat_rate`` is always ours: MusPy
0.5's marks the beats from ``note.time // resolution`` to ``note.end // resolution``
*inclusive*, so a note that ends on a beat line also fills the next beat, and a one-beat
rest after it is never counted (3/13 instead of 4/12 on the piece below). Without MusPy a
numpy implementation of the same definitions (:func:`own_stats`) computes all four; the
tests hold the two to each other and to a plain-Python count.

>>> from symusic import Note, Score, Track
>>> s = Score(4); t = Track(); s.tracks.append(t)
>>> for p in (60, 64, 67): t.notes.append(Note(0, 16, p, 80))   # C E G for 4 beats
>>> t.notes.append(Note(32, 16, 62, 80))                          # 4 beats rest, then D
>>> stats = piece_stats(s)
>>> stats["polyphony"], round(stats["empty_beat_rate"], 4), stats["scale_consistency"]
(2.0, 0.3333, 1.0)
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "SILENCE",
    "STATS",
    "mean_stats",
    "midi_stats",
    "muspy_available",
    "own_stats",
    "piece_stats",
    "pitch_class_histogram",
    "silence_profile",
    "to_muspy",
]

STATS = ("pitch_class_entropy", "scale_consistency", "polyphony", "empty_beat_rate")
_MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
_MINOR = np.array([0, 2, 3, 5, 7, 8, 10])
_SCALES = np.zeros((24, 12), dtype=bool)
for _root in range(12):
    _SCALES[2 * _root, (_root + _MAJOR) % 12] = True
    _SCALES[2 * _root + 1, (_root + _MINOR) % 12] = True


def muspy_available() -> bool:
    """Whether MusPy is installed (then :func:`piece_stats` uses it)."""
    return importlib.util.find_spec("muspy") is not None


def _ticks(score: Any) -> tuple[int, np.ndarray]:
    """(ticks per quarter, int64[N, 3]: time, duration, pitch of every non-drum note)."""
    rows = [(n.time, n.duration, n.pitch) for t in score.tracks if not t.is_drum for n in t.notes]
    return int(score.ticks_per_quarter), np.array(rows, dtype=np.int64).reshape(-1, 3)


def _busy_beats(tpq: int, notes: np.ndarray) -> np.ndarray | None:
    """``bool[B]``: whether a note sounds in each beat ``[k, k+1)`` (quarter notes) from 0 to
    the last note end (a note sounds on ``[time, time + duration)``); None without notes."""
    notes = notes[notes[:, 1] > 0]
    if not len(notes):
        return None
    start, end = notes[:, 0], notes[:, 0] + notes[:, 1]
    n_beats = int(-(-end.max() // tpq))
    busy = np.zeros(n_beats + 1, dtype=np.int64)
    np.add.at(busy, start // tpq, 1)  # difference array: +1 at the first beat, -1 after the last
    np.add.at(busy, (end - 1) // tpq + 1, -1)
    return np.cumsum(busy)[:n_beats] > 0


def _empty_beat_rate(tpq: int, notes: np.ndarray) -> float:
    """Share of the beats from 0 to the last note end in which no note sounds."""
    busy = _busy_beats(tpq, notes)
    return math.nan if busy is None else float(1.0 - busy.mean())


#: :func:`silence_profile`'s keys.
SILENCE = ("beats", "opening_beats", "empty_beat_rate_after_opening")


def silence_profile(score: Any) -> dict[str, float]:
    """Where a piece's empty beats are (not one of MusPy's statistics): ``beats``, the beats
    from 0 to the last note end (the empty-beat rate's denominator); ``opening_beats``, the
    empty beats before the first note's (an upbeat's silence); and
    ``empty_beat_rate_after_opening``, the empty-beat rate from the first note's beat on.
    NaN for every one without notes.

    >>> from symusic import Note, Score, Track
    >>> s = Score(4); t = Track(); s.tracks.append(t)
    >>> t.notes.extend([Note(12, 4, 67, 80), Note(16, 8, 60, 80), Note(32, 4, 62, 80)])
    >>> p = silence_profile(s)  # an upbeat of 3 silent beats; beats 3-8 with 6 and 7 silent
    >>> p["beats"], p["opening_beats"], round(p["empty_beat_rate_after_opening"], 4)
    (9.0, 3.0, 0.3333)
    """
    tpq, notes = _ticks(score)
    busy = _busy_beats(tpq, notes)
    if busy is None:
        return dict.fromkeys(SILENCE, math.nan)
    first = int(notes[notes[:, 1] > 0, 0].min() // tpq)
    return {
        "beats": float(len(busy)),
        "opening_beats": float(first),
        "empty_beat_rate_after_opening": float(1.0 - busy[first:].mean()),
    }


def pitch_class_histogram(score: Any) -> np.ndarray:
    """float64[12]: share of the non-drum notes in each pitch class (C = 0), each note once;
    zeros for a piece without notes."""
    _, notes = _ticks(score)
    hist = np.bincount(notes[:, 2] % 12, minlength=12).astype(np.float64)
    return hist / hist.sum() if hist.sum() else hist


def own_stats(score: Any) -> dict[str, float]:
    """The four statistics in numpy (MusPy's definitions; NaN for every one without notes)."""
    tpq, notes = _ticks(score)
    if not len(notes):
        return dict.fromkeys(STATS, math.nan)
    p = pitch_class_histogram(score)
    nz = p[p > 0]
    entropy = float(-(nz * np.log2(nz)).sum())
    consistency = float((_SCALES * p).sum(axis=1).max())
    sounding = notes[notes[:, 1] > 0]
    start, end, pitch = sounding[:, 0], sounding[:, 0] + sounding[:, 1], sounding[:, 2]
    # distinct pitches on each elementary interval between note boundaries
    edges = np.unique(np.concatenate([start, end]))
    roll = np.zeros((max(len(edges) - 1, 0), 128), dtype=bool)
    for a, b, k in zip(np.searchsorted(edges, start), np.searchsorted(edges, end), pitch, strict=True):
        roll[a:b, k] = True
    count, widths = roll.sum(axis=1), np.diff(edges)
    busy = count > 0
    polyphony = float((count * widths)[busy].sum() / widths[busy].sum()) if busy.any() else math.nan
    return {
        "pitch_class_entropy": entropy,
        "scale_consistency": consistency,
        "polyphony": polyphony,
        "empty_beat_rate": _empty_beat_rate(tpq, notes),
    }


def to_muspy(score: Any) -> Any:
    """A ``muspy.Music`` with the non-drum notes of a symusic score (one track each), its
    resolution and every time divided by their greatest common divisor (exact)."""
    import muspy

    tpq, _ = _ticks(score)
    tracks = [t for t in score.tracks if not t.is_drum]
    g = math.gcd(tpq, *(v for t in tracks for n in t.notes for v in (n.time, n.duration)))
    return muspy.Music(
        resolution=tpq // g,
        tracks=[
            muspy.Track(
                program=int(t.program),
                is_drum=False,
                notes=[muspy.Note(n.time // g, n.pitch, n.duration // g, n.velocity) for n in t.notes],
            )
            for t in tracks
        ],
    )


def piece_stats(score: Any, *, use_muspy: bool | None = None) -> dict[str, float]:
    """The four statistics of one symusic score (NaN for every one when it has no note):
    MusPy's functions for the first three when ``use_muspy`` (default: when it is
    installed), :func:`own_stats` otherwise; ``empty_beat_rate`` always ours (see the
    module's notes)."""
    ours = own_stats(score)
    if not (muspy_available() if use_muspy is None else use_muspy) or math.isnan(ours["polyphony"]):
        return ours
    import muspy

    music = to_muspy(score)
    return {
        "pitch_class_entropy": float(muspy.pitch_class_entropy(music)),
        "scale_consistency": float(muspy.scale_consistency(music)),
        "polyphony": float(muspy.polyphony(music)),
        "empty_beat_rate": ours["empty_beat_rate"],
    }


def midi_stats(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, float]]:
    """:func:`piece_stats` of each MIDI file."""
    from symusic import Score

    return [piece_stats(Score(str(p))) for p in paths]


def mean_stats(stats: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each statistic over pieces (the keys of the first; :data:`STATS` for none),
    ignoring pieces without notes (NaN)."""
    rows = list(stats)
    out: dict[str, float] = {}
    for key in tuple(rows[0]) if rows else STATS:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return out
