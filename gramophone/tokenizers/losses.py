"""What tokenizing a score loses: content miditok drops or changes beyond quantization.

miditok's ``preprocess_score`` (which ``encode`` runs first) deletes what the tokenizer
cannot express, silently: time signatures outside its vocabulary (a 7/8 piece is then
tokenized in the meter before it, 4/4 at the start: its bar lines move), notes outside the
pitch range, tracks whose program the config does not list; it clamps tempos to the tempo
range and note durations to the longest Duration token. :func:`tokenizing_losses` compares
a score with what miditok keeps of it (``preprocess_score``, miditok's own code) and returns
one :class:`TokenizingLoss` per kind of loss, with counts. Quantization (onsets, durations,
velocities and tempos moved to the nearest value the vocabulary has) is not a loss, nor is
leaving out what the config turns off by design (tempos without ``use_tempos``, velocities
without ``use_velocities``, the meter where the tokens have neither time signatures nor
bars), nor miditok's clean-up (repeated tempo or meter changes, empty tracks).

``gramophone check`` and ``gramophone decode --prompt`` warn with these for MIDI input, and
refuse it with ``--strict``.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gramophone.errors import TokenFileError
from gramophone.tokenizers import MIDI_SUFFIXES

if TYPE_CHECKING:
    from miditok import MusicTokenizer

__all__ = ["TokenizingLoss", "file_losses", "is_midi_file", "midi_losses", "tokenizing_losses"]


@dataclass(frozen=True)
class TokenizingLoss:
    """One kind of content tokenizing lost.

    ``kind``: ``"time-signature"`` (bar lines moved: meters outside the vocabulary, or
    moved to a bar line), ``"program"`` (tracks of programs the config does not list),
    ``"pitch-range"`` (notes outside the pitch range), ``"no-notes"`` (every note dropped:
    nothing musical remains), ``"tempo-range"`` (tempos clamped to the range),
    ``"duration"`` (notes shortened to the longest Duration token); ``count`` of ``total``
    (bar lines, notes, tempo changes); ``message``: one line saying so, without the file's
    name.
    """

    kind: str
    count: int
    total: int
    message: str


def is_midi_file(path: str | os.PathLike[str]) -> bool:
    """A MIDI file by its suffix or its first bytes (``MThd``); ``-`` is not."""
    if str(path) == "-":
        return False
    p = Path(path)
    if p.suffix.lower() in MIDI_SUFFIXES:
        return True
    try:
        with p.open("rb") as fh:
            return fh.read(4) == b"MThd"
    except OSError:
        return False


def midi_losses(tokenizer: MusicTokenizer, path: str | os.PathLike[str]) -> list[TokenizingLoss]:
    """:func:`tokenizing_losses` of a MIDI file (a one-line :class:`TokenFileError` naming
    the file when it cannot be read or preprocessed)."""
    from symusic import Score

    try:
        score = Score(str(path))
    except Exception as exc:  # symusic raises RuntimeError/ValueError on bad files
        raise TokenFileError(f"{path}: not a readable MIDI file ({exc})") from exc
    try:
        return tokenizing_losses(tokenizer, score)
    except Exception as exc:  # miditok fails in many ways on unusual files
        raise TokenFileError(f"{path}: miditok cannot tokenize it ({type(exc).__name__}: {exc})") from exc


def tokenizing_losses(tokenizer: MusicTokenizer, score: Any) -> list[TokenizingLoss]:
    """What ``tokenizer.encode(score)`` loses, one record per kind (empty: nothing)."""
    cfg = tokenizer.config
    pre = tokenizer.preprocess_score(score)
    out: list[TokenizingLoss] = []
    meter = _meter_loss(tokenizer, score, pre)
    if meter is not None:
        out.append(meter)

    total = sum(len(t.notes) for t in score.tracks)
    tracks = list(score.tracks)
    listed = [not cfg.use_programs or _program(t) in cfg.programs for t in tracks]
    kept = [t for t, ok in zip(tracks, listed, strict=True) if ok]
    dropped = [t for t, ok in zip(tracks, listed, strict=True) if not ok and len(t.notes)]
    if dropped:
        n = sum(len(t.notes) for t in dropped)
        programs = ", ".join(str(p) for p in sorted({_program(t) for t in dropped}))
        what = "track" if len(dropped) == 1 else "tracks"
        out.append(
            TokenizingLoss(
                "program",
                n,
                total,
                f"{_of(n, total, 'note')} in {len(dropped)} {what} of programs not among the "
                f"tokenizer's ({programs}) and {'was' if n == 1 else 'were'} dropped",
            )
        )
    in_range = [[n for n in t.notes if _in_range(cfg, t, n.pitch)] for t in kept]
    outside = sum(len(t.notes) for t in kept) - sum(len(ns) for ns in in_range)
    if outside:
        drum_ranges = cfg.use_pitchdrum_tokens and any(t.is_drum for t in kept)
        lo, hi = (int(x) for x in cfg.pitch_range)
        where = f"pitch range {lo}-{hi}"
        if drum_ranges:
            dlo, dhi = (int(x) for x in cfg.drums_pitch_range)
            where += f" (drums {dlo}-{dhi})"
        out.append(
            TokenizingLoss(
                "pitch-range",
                outside,
                total,
                f"{_of(outside, total, 'note')} outside the tokenizer's {where} and "
                f"{'was' if outside == 1 else 'were'} dropped",
            )
        )
    if total and not sum(len(t.notes) for t in pre.tracks):
        out.append(
            TokenizingLoss(
                "no-notes",
                total,
                total,
                "nothing musical remains: "
                + ("its only note was dropped" if total == 1 else f"all {total} notes were dropped"),
            )
        )
    tempo = _tempo_loss(tokenizer, score)
    if tempo is not None:
        out.append(tempo)
    duration = _duration_loss(tokenizer, score, pre, [n for ns in in_range for n in ns])
    if duration is not None:
        out.append(duration)
    return out


def _of(count: int, total: int, noun: str) -> str:
    """``"3 of 120 notes are"``, ``"1 of 120 notes is"``, ``"1 of 1 note is"``."""
    return f"{count} of {total} {noun}{'' if total == 1 else 's'} {'is' if count == 1 else 'are'}"


def _program(track: Any) -> int:
    return -1 if track.is_drum else int(track.program)


def _in_range(cfg: Any, track: Any, pitch: int) -> bool:
    lo, hi = cfg.drums_pitch_range if track.is_drum and cfg.use_pitchdrum_tokens else cfg.pitch_range
    return bool(int(lo) <= pitch <= int(hi))


def _beyond(values: Sequence[float], grid: Sequence[float], *, below: bool = True) -> list[float]:
    """The values outside ``grid``'s range (above it; and below it if ``below``) by more
    than half its step at that end: their nearest grid value is further than quantization
    can explain (clamped)."""
    g = sorted(set(grid))
    if len(g) < 2:
        return []
    lo, hi = g[0] - (g[1] - g[0]) / 2, g[-1] + (g[-1] - g[-2]) / 2
    return [v for v in values if (below and v < lo) or v > hi]


def _tempo_loss(tokenizer: MusicTokenizer, score: Any) -> TokenizingLoss | None:
    if not tokenizer.config.use_tempos or not len(score.tempos):
        return None
    qpms = [float(t.qpm) for t in score.tempos]
    grid = [float(x) for x in tokenizer.tempos]
    out = _beyond(qpms, grid)
    if not out:
        return None
    shown = ", ".join(f"{v:g}" for v in sorted(set(out))[:3])
    return TokenizingLoss(
        "tempo-range",
        len(out),
        len(qpms),
        f"{len(out)} of {len(qpms)} tempo{'' if len(qpms) == 1 else 's'} ({shown} bpm) "
        f"{'is' if len(out) == 1 else 'are'} outside the tokenizer's tempo range "
        f"{min(grid):g}-{max(grid):g}, clamped to it",
    )


def _sections(signatures: Any, tpq: int) -> list[tuple[Fraction, int, int]]:
    """(start in quarter notes, numerator, denominator) of each meter, 4/4 from 0 if none
    is at 0 (the MIDI default, and miditok's)."""
    out = [(Fraction(int(ts.time), tpq), int(ts.numerator), int(ts.denominator)) for ts in signatures]
    out.sort(key=lambda s: s[0])
    if not out or out[0][0] > 0:
        out.insert(0, (Fraction(0), 4, 4))
    return out


def _bar_lines(sections: list[tuple[Fraction, int, int]], end: Fraction) -> list[Fraction]:
    """The bar lines (quarter notes) before ``end``: each meter change starts a bar."""
    lines: list[Fraction] = []
    for i, (start, num, den) in enumerate(sections):
        stop = sections[i + 1][0] if i + 1 < len(sections) else end
        bar = Fraction(4 * num, den)
        t = start
        while t < stop:
            lines.append(t)
            t += bar
    return lines


def _meter_loss(tokenizer: MusicTokenizer, score: Any, pre: Any) -> TokenizingLoss | None:
    """Bar lines of the score that the tokenized meters do not have (compared on miditok's
    grid: a bar line between two of its ticks is quantization), with the meters dropped."""
    cfg = tokenizer.config
    has_bars = "Bar_None" in tokenizer.vocab
    if not cfg.use_time_signatures and not has_bars:
        return None  # no meter in the tokens at all: nothing to move
    end_ticks = max((n.end for t in score.tracks for n in t.notes), default=0)
    if not end_ticks:
        return None
    tpq, tpq_pre = int(score.ticks_per_quarter), int(pre.ticks_per_quarter)
    end = Fraction(int(end_ticks), tpq)
    original = _sections(score.time_signatures, tpq)
    tokenized = _sections(pre.time_signatures if cfg.use_time_signatures else [], tpq_pre)
    lines = _bar_lines(original, end)
    kept = {round(t * tpq_pre) for t in _bar_lines(tokenized, end + 1)}
    moved = sum(1 for t in lines if round(t * tpq_pre) not in kept)
    if not moved:
        return None
    supported = {(int(n), int(d)) for n, d in tokenizer.time_signatures} if cfg.use_time_signatures else set()
    missing = sorted({(n, d) for _, n, d in original if (n, d) not in supported and (n, d) != (4, 4)})
    if not cfg.use_time_signatures:
        missing = sorted({(n, d) for _, n, d in original if (n, d) != (4, 4)})
    names = ", ".join(f"{n}/{d}" for n, d in missing)
    if missing and cfg.use_time_signatures:
        why = f"time signatures outside the tokenizer's vocabulary ({names}) were dropped"
    elif missing:
        why = f"the tokenizer has no time signatures: {names} is tokenized as 4/4"
    else:
        why = "time signatures off the bar lines were moved to the next one"
    return TokenizingLoss(
        "time-signature",
        moved,
        len(lines),
        f"{moved} of {len(lines)} bar lines moved: {why}",
    )


def _duration_loss(
    tokenizer: MusicTokenizer, score: Any, pre: Any, notes: Sequence[Any]
) -> TokenizingLoss | None:
    """Notes longer than the longest Duration token (miditok shortens them to it), in beats
    of the meter miditok tokenizes them in."""
    if getattr(tokenizer, "_note_on_off", False) or not notes or not tokenizer.durations:
        return None
    grid = [b + Fraction(p, r) for b, p, r in tokenizer.durations]
    tpq, tpq_pre = int(score.ticks_per_quarter), int(pre.ticks_per_quarter)
    use_ts = tokenizer.config.use_time_signatures
    sections = _sections(pre.time_signatures if use_ts else [], tpq_pre)
    starts = [s[0] for s in sections]
    beats = []
    for n in notes:
        onset = Fraction(round(Fraction(int(n.time), tpq) * tpq_pre), tpq_pre)
        den = sections[max(0, bisect.bisect_right(starts, onset) - 1)][2]
        beats.append(Fraction(int(n.duration), tpq) * den / 4)
    long = _beyond([float(b) for b in beats], [float(g) for g in grid], below=False)  # short: lengthened
    if not long:
        return None
    top = max(grid)
    return TokenizingLoss(
        "duration",
        len(long),
        len(notes),
        f"{_of(len(long), len(notes), 'note')} longer than the tokenizer's longest duration "
        f"({float(top):g} beats), shortened to it",
    )


def file_losses(
    tokenizer: MusicTokenizer, path: str | os.PathLike[str], *, strict: bool = False
) -> list[TokenizingLoss]:
    """:func:`midi_losses` of ``path`` if it is a readable MIDI file (else none: reading
    it reports the problem). With ``strict``, any loss is a one-line
    :class:`TokenFileError` naming the file and every loss."""
    if str(path) == "-" or not Path(path).is_file() or not is_midi_file(path):
        return []
    losses = midi_losses(tokenizer, path)
    if strict and losses:
        raise TokenFileError(
            f"{path}: tokenizing loses content (--strict): " + "; ".join(loss.message for loss in losses)
        )
    return losses
