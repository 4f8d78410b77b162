"""A few musical statistics of a piece, to set sampled pieces next to held-out chorales.

All are computed on a symusic ``Score`` (every non-drum track together), in beats of a
quarter note:

* ``pitch_class_entropy``: Shannon entropy (bits) of the duration-weighted pitch-class
  histogram; 0 for one pitch class, log2(12) = 3.585 for all twelve equally.
* ``scale_consistency``: the largest share of notes (duration-weighted) that fit one
  major or natural-minor scale, over the 24 of them (Mogren 2016).
* ``polyphony``: mean number of notes sounding at once, over the time when at least one
  sounds.
* ``empty_beat_rate``: share of the beats from 0 to the last note end in which no note
  sounds.

>>> from symusic import Note, Score, Track
>>> s = Score(4); t = Track(); s.tracks.append(t)
>>> for p in (60, 64, 67): t.notes.append(Note(0, 4, p, 80))
>>> t.notes.append(Note(8, 4, 62, 80))
>>> stats = piece_stats(s)
>>> stats["polyphony"], round(stats["empty_beat_rate"], 4), stats["scale_consistency"]
(2.0, 0.3333, 1.0)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["STATS", "mean_stats", "piece_stats"]

STATS = ("pitch_class_entropy", "scale_consistency", "polyphony", "empty_beat_rate")
_MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
_MINOR = np.array([0, 2, 3, 5, 7, 8, 10])


def _notes(score: Any) -> np.ndarray:
    """float64[N, 3]: (start, end, pitch) in quarter notes, every non-drum track."""
    tpq = float(score.ticks_per_quarter)
    rows = [
        (n.time / tpq, (n.time + n.duration) / tpq, n.pitch)
        for track in score.tracks
        if not track.is_drum
        for n in track.notes
        if n.duration > 0
    ]
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def piece_stats(score: Any) -> dict[str, float]:
    """The four statistics of one piece (NaN for every one when it has no note)."""
    notes = _notes(score)
    if not len(notes):
        return dict.fromkeys(STATS, float("nan"))
    start, end, pitch = notes[:, 0], notes[:, 1], notes[:, 2].astype(np.int64)
    dur = end - start
    hist = np.bincount(pitch % 12, weights=dur, minlength=12)
    p = hist / hist.sum()
    nz = p[p > 0]
    entropy = float(-(nz * np.log2(nz)).sum())
    scales = [(root + steps) % 12 for root in range(12) for steps in (_MAJOR, _MINOR)]
    consistency = max(float(p[s].sum()) for s in scales)
    # Sweep the note boundaries: sounding count on each elementary interval.
    edges = np.unique(np.concatenate([start, end]))
    mids = (edges[:-1] + edges[1:]) / 2
    sounding = ((start[None, :] <= mids[:, None]) & (end[None, :] > mids[:, None])).sum(axis=1)
    widths = np.diff(edges)
    busy = sounding > 0
    polyphony = float((sounding * widths)[busy].sum() / widths[busy].sum())
    n_beats = int(np.ceil(end.max()))
    beat_busy = np.zeros(n_beats, dtype=bool)
    for s, e in zip(start, end, strict=True):
        beat_busy[int(np.floor(s)) : max(int(np.ceil(e)), int(np.floor(s)) + 1)] = True
    empty = float(1.0 - beat_busy.mean())
    return {
        "pitch_class_entropy": entropy,
        "scale_consistency": consistency,
        "polyphony": polyphony,
        "empty_beat_rate": empty,
    }


def mean_stats(stats: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each statistic over pieces, ignoring pieces without notes (NaN)."""
    rows = list(stats)
    out: dict[str, float] = {}
    for key in STATS:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return out
